"""A plain PyTorch plastic RNN, written from the equations with autograd.

The tests compare ``neuroplastic.torch.PlasticRNN`` with it, and the
benchmark (``python/bench/torch_module_bench.py``) uses it as the baseline
that a PyTorch user would write: one batched step per time step, autograd
keeping every step's trace for the backward pass.

Its parameters carry the same names as ``PlasticRNN``'s, so
``plain.load_state_dict(module.state_dict())`` makes the two the same layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTRS = {
    "w": "w",
    "alpha": "alpha",
    "eta": "eta",
    "eta_e": "eta_e",
    "u": "u",
    "b": "b",
    "mod.v": "mod_v",
    "mod.c": "mod_c",
    "mod.fanout": "mod_fanout",
    "mod.fanout_bias": "mod_fanout_bias",
}


class PlainPlasticRNN(nn.Module):
    """``x = h_{t-1}``, ``a_j = b_j + (U e_t)_j + Σ_i (W_ji + α_ji H_ji) x_i``,
    ``y = σ(a)``, ``P_ji = y_j x_i``, then the rule's trace update."""

    def __init__(self, config, dtype=torch.float32):
        super().__init__()
        self.cfg = config
        for name, shape in config.param_shapes().items():
            self.register_parameter(ATTRS[name], nn.Parameter(torch.zeros(shape, dtype=dtype)))
        bound = 1.0 / math.sqrt(config.n)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name in ("eta", "eta_e"):
                    p.fill_(0.01)
                else:
                    p.uniform_(-bound, bound)

    def _p(self, name):
        return getattr(self, ATTRS[name], None)

    def forward(self, x, state=None):
        cfg = self.cfg
        bsz, steps, _ = x.shape
        n = cfg.n
        if state is None:
            h = x.new_zeros(bsz, n)
            hebb = x.new_zeros(bsz, n, n)
            elig = x.new_zeros(bsz, n, n) if cfg.rule == "retroactive" else None
        else:
            h, hebb, elig = state
        w, alpha = self._p("w"), self._p("alpha")
        # α per connection (N, N), per neuron (N,) or one scalar (1,).
        if cfg.alpha == "neuron":
            alpha = alpha[:, None]
        act = torch.tanh if cfg.activation == "tanh" else (lambda a: a)
        drive = x @ self._p("u").t() if cfg.input_map == "linear" else x
        if cfg.bias:
            drive = drive + self._p("b")
        ys = []
        for t in range(steps):
            pre = h
            eff = w + alpha * hebb  # (B, N, N)
            a = drive[:, t] + torch.bmm(eff, pre.unsqueeze(2)).squeeze(2)
            y = act(a)
            outer = y.unsqueeze(2) * pre.unsqueeze(1)  # P_ji = y_j x_i
            if cfg.rule == "hebb":
                eta = self._p("eta")
                hebb = (1 - eta) * hebb + eta * outer
            elif cfg.rule == "oja":
                eta = self._p("eta")
                hebb = hebb + eta * y.unsqueeze(2) * (pre.unsqueeze(1) - y.unsqueeze(2) * hebb)
            else:
                s = y @ self._p("mod.v").t()
                if cfg.modulator_bias:
                    s = s + self._p("mod.c")
                m = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda v: v}[cfg.modulator](s)
                # M_j = Σ_k m_k F_kj (+ g_j); F = ones when the fan-out is off.
                big_m = m @ self._p("mod.fanout") if cfg.fanout else m.sum(1, keepdim=True).expand(-1, n)
                if cfg.fanout_bias:
                    big_m = big_m + self._p("mod.fanout_bias")
                if cfg.rule == "modulated":
                    hebb = torch.clamp(hebb + big_m.unsqueeze(2) * outer, -cfg.clip, cfg.clip)
                else:
                    hebb = torch.clamp(hebb + big_m.unsqueeze(2) * elig, -cfg.clip, cfg.clip)
                    eta_e = self._p("eta_e")
                    elig = (1 - eta_e) * elig + eta_e * outer
            h = y
            ys.append(y)
        return torch.stack(ys, 1), (h, hebb, elig)

