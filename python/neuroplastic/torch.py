"""PyTorch layers on top of the neuroplastic kernels.

:class:`PlasticRNN` (and :class:`ModulatedPlasticRNN`,
:class:`RetroactivePlasticRNN`) is a recurrent plastic layer whose ``forward``
runs a whole batch of episodes through one :class:`torch.autograd.Function`:
the analytic backward pass of the crate replaces autograd's per-step tape,
so memory does not grow with the episode's trace history. Its parameters are
ordinary ``nn.Parameter``\\ s, gradients land in ``.grad`` through
``loss.backward()``.

Tensors stay where they are: CPU ``float32`` tensors run on the SIMD CPU
backend (or, with ``backend="reference"``, on the f64 reference), ``float64``
tensors on the reference backend (for ``torch.autograd.gradcheck``). A
tensor on a device the extension has no backend for is an error, never a
silent copy.

:func:`meta_loss` is the meta-loss of OML, ANML or MAML-style meta-learning
(an inner SGD loop per task, then an outer loss) as one autograd function
whose backward is the crate's exact meta-gradient; :func:`meta_params`
names a script's ``nn.Sequential`` networks for it.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from . import _native

__all__ = [
    "PlasticState",
    "PlasticRNN",
    "ModulatedPlasticRNN",
    "RetroactivePlasticRNN",
    "plastic_episode",
    "meta_loss",
    "meta_params",
]

# The crate's tensor names (those of the file format) and the attribute each
# becomes on a module: a parameter name may not contain a dot.
PARAM_ATTRS: Dict[str, str] = {
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


class PlasticState(NamedTuple):
    """The state between two calls: ``h`` ``(B, N)``, the plastic trace
    ``hebb`` ``(B, N, I)`` and, for the retroactive rule, the eligibility
    trace ``elig`` ``(B, N, I)`` (``None`` otherwise)."""

    h: torch.Tensor
    hebb: torch.Tensor
    elig: Optional[torch.Tensor] = None


def _array(t: torch.Tensor):
    # A CPU tensor shares its memory with the numpy view; the extension copies
    # what it keeps, so later in-place changes cannot alter the gradients.
    return t.detach().contiguous().numpy()


def _engine_device(tensors: Sequence[torch.Tensor], backend: str, what: str = "the inputs, state and parameters") -> str:
    """The engine device for tensors that must all live on one torch device."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(f"neuroplastic: {what} must be on one device, got {names}")
    (device,) = devices
    if device.type == "cpu":
        return backend
    if device.type == "cuda":
        # Passed on as is: the extension either runs it on that GPU or says
        # why it cannot (no CUDA backend in this build).
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    raise ValueError(f"neuroplastic: tensors on {device} are not supported; use CPU tensors")


class _Episode(torch.autograd.Function):
    """One batch of whole episodes: forward and analytic backward in Rust."""

    @staticmethod
    def forward(ctx, engine, names, x, h0, hebb0, elig0, *params):
        cfg = engine.config
        arrays = {name: _array(p) for name, p in zip(names, params)}
        state = None
        if hebb0 is not None:
            state = {"hebb": _array(hebb0)}
            if h0 is not None:
                state["h"] = _array(h0)
            if elig0 is not None:
                state["elig"] = _array(elig0)
        y, last, handle = engine.forward(arrays, _array(x), state)
        ctx.engine, ctx.handle, ctx.names = engine, handle, names
        ctx.state_keys = tuple(cfg.state_shapes(1))
        ctx.set_materialize_grads(False)
        # Unused state entries come back as empty tensors (an autograd
        # Function returns tensors); plastic_episode turns them into None.
        return (
            torch.from_numpy(y),
            torch.from_numpy(last["h"]) if "h" in last else x.new_empty(0),
            torch.from_numpy(last["hebb"]),
            torch.from_numpy(last["elig"]) if "elig" in last else x.new_empty(0),
        )

    @staticmethod
    def backward(ctx, gy, gh, ghebb, gelig):
        engine, handle = ctx.engine, ctx.handle
        b, t = handle.shape
        dtype = torch.float64 if handle.dtype == "float64" else torch.float32
        cfg = engine.config
        if gy is None:
            gy = torch.zeros(b, t, cfg.n, dtype=dtype)
        dlast = None
        if gh is not None or ghebb is not None or gelig is not None:
            shapes = cfg.state_shapes(b)
            given = {"h": gh, "hebb": ghebb, "elig": gelig}
            dlast = {
                k: _array(given[k]) if given[k] is not None else _array(torch.zeros(shapes[k], dtype=dtype))
                for k in ctx.state_keys
            }
        grads = engine.backward(handle, _array(gy), dlast)
        need = ctx.needs_input_grad
        gx = torch.from_numpy(grads["inputs"]) if need[2] else None
        init = grads["init"]
        gh0 = torch.from_numpy(init["h"]) if need[3] and "h" in init else None
        ghebb0 = torch.from_numpy(init["hebb"]) if need[4] else None
        gelig0 = torch.from_numpy(init["elig"]) if need[5] and "elig" in init else None
        gparams = [
            torch.from_numpy(grads["params"][name]) if need[6 + k] else None for k, name in enumerate(ctx.names)
        ]
        return (None, None, gx, gh0, ghebb0, gelig0, *gparams)


def plastic_episode(
    engine: _native.Engine,
    params: Dict[str, torch.Tensor],
    x: torch.Tensor,
    state: Optional[Sequence[Optional[torch.Tensor]]] = None,
) -> Tuple[torch.Tensor, PlasticState]:
    """Runs ``engine`` over a batch of episodes, differentiably.

    ``params``: ``{name: tensor}`` under the crate's names (``"w"``,
    ``"alpha"``, ``"mod.v"``, ... as in ``engine.config.param_shapes()``);
    ``x``: ``(B, T, X)``; ``state``: a :class:`PlasticState` (or ``(h, hebb,
    elig)``) or ``None`` for zeros. Returns ``y`` ``(B, T, N)`` and the final
    state; gradients flow to every tensor that requires them.
    """
    if state is not None:
        h0, hebb0, elig0 = (tuple(state) + (None, None, None))[:3]
        if hebb0 is None:
            raise ValueError("state: hebb is missing (pass None for the zero state)")
    else:
        h0 = hebb0 = elig0 = None
    names = tuple(params)
    y, h, hebb, elig = _Episode.apply(engine, names, x, h0, hebb0, elig0, *params.values())
    cfg = engine.config
    return y, PlasticState(
        h if cfg.topology == "recurrent" else None,
        hebb,
        elig if cfg.rule == "retroactive" else None,
    )


class PlasticRNN(nn.Module):
    """A recurrent plastic layer over whole episodes, ``batch_first``.

    One step, with ``x = h_{t-1}`` and trace ``H`` (``P_ji = y_j x_i``)::

        y_j = σ(b_j + (U x_t)_j + Σ_i (W_ji + α_ji H_ji) x_i),   h_t = y
        Hebb: H' = (1 − η) H + η P      Oja: H'_ji = H_ji + η y_j (x_i − y_j H_ji)

    ``forward(x, state=None)`` takes ``x`` ``(B, T, input_size)`` and returns
    ``(y, state)``: ``y`` ``(B, T, hidden_size)`` and the final
    :class:`PlasticState`, which may be fed back in to continue the episodes
    (gradients flow through it).

    Arguments are those of ``neuroplastic.LayerConfig`` (``rule``, ``alpha``,
    ``activation``, ``bias``, ``input_map``, ``eta``, ``modulators``,
    ``modulator``, ``modulator_bias``, ``fanout``, ``fanout_bias``,
    ``clip``) and of ``neuroplastic.Engine`` (``threads``, ``checkpoint``,
    ``truncate``, ``check_finite``); ``backend`` is ``"cpu"`` (SIMD, float32)
    or ``"reference"`` (f64 loops; float32 or float64 tensors);
    ``init_eta`` starts η (and η_e).
    """

    default_rule = "hebb"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        rule: Optional[str] = None,
        alpha: str = "connection",
        activation: str = "tanh",
        bias: bool = False,
        input_map: str = "linear",
        eta: str = "learned",
        init_eta: float = 0.01,
        modulators: int = 1,
        modulator: str = "tanh",
        modulator_bias: bool = True,
        fanout: bool = False,
        fanout_bias: bool = False,
        clip: float = 1.0,
        backend: str = "cpu",
        threads: Optional[int] = None,
        checkpoint="auto",
        truncate: Optional[Tuple[str, int]] = None,
        check_finite: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if backend not in ("cpu", "reference"):
            raise ValueError(f'backend: unknown value "{backend}"; expected "cpu" or "reference"')
        # Kept to rebuild the native objects after pickling or deepcopy.
        self._config_args = (rule or self.default_rule, hidden_size, input_size)
        self._config_kwargs = dict(
            input_map=input_map,
            alpha=alpha,
            activation=activation,
            bias=bias,
            eta=eta,
            modulators=modulators,
            modulator=modulator,
            modulator_bias=modulator_bias,
            fanout=fanout,
            fanout_bias=fanout_bias,
            clip=clip,
        )
        self.config = _native.LayerConfig(*self._config_args, **self._config_kwargs)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.backend, self.init_eta = backend, init_eta
        self._options = dict(threads=threads, checkpoint=checkpoint, truncate=truncate, check_finite=check_finite)
        # Built once here so that bad options fail at construction.
        self._engines = {backend: _native.Engine(self.config, backend, **self._options)}
        factory = {"device": device, "dtype": dtype}
        self._names = tuple(self.config.param_shapes())
        for name, shape in self.config.param_shapes().items():
            self.register_parameter(PARAM_ATTRS[name], nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def __getstate__(self):
        # The native config and engines are rebuilt from the arguments
        # (torch.save of the whole module, copy.deepcopy).
        state = self.__dict__.copy()
        state["config"], state["_engines"] = None, {}
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.config = _native.LayerConfig(*self._config_args, **self._config_kwargs)

    def reset_parameters(self) -> None:
        """Draws the parameters from ``torch``'s generator: weights uniform in
        ``±1/√fan-in`` (like ``nn.RNN``), η and η_e = ``init_eta``, biases of
        the modulator zero, fan-out ones."""
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.config.pre)
            for name in self._names:
                p = self.param(name)
                if name in ("eta", "eta_e"):
                    p.fill_(self.init_eta)
                elif name in ("mod.c", "mod.fanout_bias"):
                    p.zero_()
                elif name == "mod.fanout":
                    p.fill_(1.0)
                elif name == "u":
                    p.uniform_(-1.0 / math.sqrt(max(self.input_size, 1)), 1.0 / math.sqrt(max(self.input_size, 1)))
                else:
                    p.uniform_(-bound, bound)

    def param(self, name: str) -> nn.Parameter:
        """The parameter under the crate's name (``"w"``, ``"mod.v"``, ...)."""
        return getattr(self, PARAM_ATTRS[name])

    def named_plastic_params(self) -> Dict[str, torch.Tensor]:
        """``{crate name: parameter}``, e.g. for ``Engine.forward`` or a file."""
        return {name: self.param(name) for name in self._names}

    def engine(self, device: str) -> _native.Engine:
        """The engine for an engine device (``"cpu"``, ``"reference"``, ``"cuda:K"``), cached."""
        if device not in self._engines:
            self._engines[device] = _native.Engine(self.config, device, **self._options)
        return self._engines[device]

    def forward(
        self, x: torch.Tensor, state: Optional[Sequence[Optional[torch.Tensor]]] = None
    ) -> Tuple[torch.Tensor, PlasticState]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor (B, T, {self.input_size}), got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(
                f"x: expected shape (B, T, {self.input_size}) (batch first), got shape {tuple(x.shape)}"
            )
        params = self.named_plastic_params()
        tensors = [x, *params.values(), *(s for s in (state or ()) if s is not None)]
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) > 1:
            raise TypeError(f"neuroplastic: x, state and parameters must share one dtype, got {sorted(map(str, dtypes))}")
        (dtype,) = dtypes
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"neuroplastic: expected float32 or float64 tensors, got {dtype}")
        if dtype == torch.float64 and self.backend != "reference":
            raise TypeError(
                'neuroplastic: float64 runs on the reference backend only (backend="reference"); '
                "the CPU backend computes in float32"
            )
        return plastic_episode(self.engine(_engine_device(tensors, self.backend)), params, x, state)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, rule={self.config.rule!r}, backend={self.backend!r}"


class ModulatedPlasticRNN(PlasticRNN):
    """:class:`PlasticRNN` with the backpropamine rule: a neuromodulator
    ``m = μ(V y + c)`` (``modulators`` outputs) gates the trace update,
    ``M_j = Σ_k m_k F_kj + g_j``, ``H' = clip(H + M_j y_j x_i, ±clip)``."""

    default_rule = "modulated"


class RetroactivePlasticRNN(PlasticRNN):
    """:class:`ModulatedPlasticRNN` with an eligibility trace ``E``:
    ``H' = clip(H + M_j E_ji, ±clip)``, then ``E' = (1 − η_e) E + η_e y_j x_i``;
    the state carries ``elig``."""

    default_rule = "retroactive"


def _transforms() -> list:
    """The ``torch.func`` transforms running now (outermost first); empty
    outside them or without functorch's interpreter stack."""
    try:
        return torch._C._functorch.get_interpreter_stack() or []
    except AttributeError:
        return []


def _second_order_asked() -> bool:
    """Whether the backward now running is asked for a graph of its own (a
    second derivative): ``create_graph=True``, ``torch.func.grad`` nested
    in another transform, or ``torch.func.vjp``'s function (it asks for a
    graph, and cannot be told apart from ``create_graph=True``). A single
    ``torch.func.grad`` (or ``jacrev``) level also runs backward in grad
    mode, and is fine: nothing differentiates its result again."""
    # Plain autograd with create_graph=True (no transform, or a torch without
    # functorch's interpreter stack), or more than one transform level (the
    # outer one would differentiate this backward).
    return torch.is_grad_enabled() and len(_transforms()) != 1


def _meta_arrays(names, params, keys, data):
    """The numpy views the engine reads: parameters by name, and the
    trajectory, its targets (class indices for xent) in the inputs' dtype."""
    arrays = {name: _array(p) for name, p in zip(names, params)}
    dtype = next(iter(params)).dtype
    return arrays, {k: _array(t.to(dtype)) for k, t in zip(keys, data)}


class _MetaLoss(torch.autograd.Function):
    """The meta-loss through an inner SGD loop, its gradient computed in Rust
    together with the loss (no tape through the inner steps). Written with
    ``setup_context`` so that ``torch.func.grad`` (``grad_and_value``,
    ``jacrev``) goes through it too."""

    @staticmethod
    def forward(names, keys, options, *tensors):
        # Here, under torch.func too, the tensors are plain: numpy can read them.
        params, data = tensors[: len(names)], tensors[len(names) :]
        loss, grads = _native.meta_grad(*_meta_arrays(names, params, keys, data), **options)
        # The gradients are outputs too (not differentiable), so that
        # setup_context can save them as autograd saves tensors: freed after
        # backward unless the graph is retained; a second backward refused.
        return (params[0].new_tensor(loss), *(torch.from_numpy(grads[name]) for name in names))

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, *grads = output
        ctx.mark_non_differentiable(*grads)
        ctx.save_for_backward(*grads)

    @staticmethod
    def backward(ctx, gloss, *_):
        # The gradient comes from the engine, not from a graph: to autograd it
        # would be a constant, and a second derivative through it silently
        # zero. Refuse to build a graph of it.
        if _second_order_asked():
            raise RuntimeError(
                "neuroplastic.torch.meta_loss: its gradient cannot be differentiated again, and this backward "
                "was asked for a graph (create_graph=True, nested torch.func transforms, or torch.func.vjp, which "
                "builds one): the engine returns the exact meta-gradient, not a graph. Use backward() or "
                "torch.autograd.grad without create_graph, or torch.func.grad / grad_and_value / jacrev"
            )
        need = ctx.needs_input_grad
        gparams = [gloss * g if need[3 + k] else None for k, g in enumerate(ctx.saved_tensors)]
        # The trajectory's tensors are data: no gradient.
        return (None, None, None, *gparams, *([None] * (len(need) - 3 - len(gparams))))


def meta_loss(
    params: Mapping[str, torch.Tensor],
    trajectory: Mapping[str, torch.Tensor],
    *,
    inner_lr: Optional[float] = None,
    loss: str = "mse",
    order: str = "second",
    truncate: int = 0,
    clamp: float = 0.0,
    gate_at: int = 0,
    backend: str = "cpu",
    threads: Optional[int] = None,
) -> torch.Tensor:
    """The meta-loss of OML, ANML or MAML-style meta-learning, differentiably.

    For each of the P tasks: θ ← θ₀ (the ``pln.*`` tensors), S inner SGD
    steps ``θ ← θ − β·clamp(∇_θ ℓ(θ; inner batch k))``, then the loss on the
    task's outer batch at the final θ; the result is the mean over tasks, a
    0-dim tensor. ``.backward()`` puts dL/d(tensor) in every parameter that
    requires a gradient, exactly (second order through every inner step; or
    ``order="first"``, or only the last ``truncate`` steps).

    ``params``: ``{name: tensor}`` under the crate's names: ``rln.{l}.weight``
    ``(out, in)`` and ``rln.{l}.bias`` (the representation network, ReLU after
    every layer; optional), ``pln.{l}.*`` (the prediction network, the fast
    weights; required), ``nm.{l}.*`` (ANML's neuromodulatory network on the
    raw input; its sigmoid gates the input of PLN layer ``gate_at``;
    optional) and ``inner_lr`` (a learned β, shape ``(1,)``; else pass
    ``inner_lr=`` a fixed one). ``trajectory``: ``inner.x`` ``(P, S, Bi, D)``,
    ``inner.y`` ``(P, S, Bi, O)`` (``loss="mse"``) or ``(P, S, Bi)`` class
    indices (``loss="xent"``), ``outer.x`` ``(P, Bo, D)``, ``outer.y``
    ``(P, Bo, O)`` or ``(P, Bo)``; data, not differentiated.

    float32 CPU tensors run on the SIMD backend; ``backend="reference"``
    runs the f64 reference (float32 or float64 tensors).

    ``torch.func.grad``, ``grad_and_value`` and ``jacrev`` of it work (one
    level); what would differentiate its gradient again (``create_graph=True``,
    nested transforms, ``torch.func.vjp``) is refused, and so is
    ``torch.func.vmap`` (the tasks are batched along P already).

    When no gradient can be asked of the result (under ``torch.no_grad()``,
    or when no parameter requires one, as in a validation pass), only the
    loss is computed (``neuroplastic.meta_loss``): the same value bit for
    bit, for a fraction of the time and memory, and a tensor without a
    ``grad_fn``.
    """
    if backend not in ("cpu", "reference"):
        raise ValueError(f'backend: unknown value "{backend}"; expected "cpu" or "reference"')
    if isinstance(inner_lr, torch.Tensor):
        raise TypeError(
            "inner_lr: a fixed β is a Python number; for a learned β put the tensor in params['inner_lr'] "
            "(shape (1,)), where it gets a gradient"
        )
    for arg, d in (("params", params), ("trajectory", trajectory)):
        if not isinstance(d, Mapping):
            raise TypeError(f"{arg}: expected a dict {{name: torch.Tensor}}, got {type(d).__name__}")
        for name, t in d.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{arg}[{name!r}]: expected a torch.Tensor, got {type(t).__name__}")
            if t.layout != torch.strided:
                raise TypeError(f"{arg}[{name!r}]: expected a dense tensor, got layout {t.layout}")
    if not params:
        raise ValueError('params: empty; the prediction network needs at least "pln.0.weight" and "pln.0.bias"')
    given = [name for name, t in trajectory.items() if t.requires_grad]
    if given:
        raise ValueError(
            f"trajectory: {', '.join(given)} require gradients, which meta_loss does not compute "
            "(the trajectory is data); pass them detached"
        )
    tensors = [*params.values(), *trajectory.values()]
    float_dtypes = {t.dtype for t in params.values()} | {trajectory[k].dtype for k in ("inner.x", "outer.x") if k in trajectory}
    odd = float_dtypes - {torch.float32, torch.float64}
    if odd:
        raise TypeError(
            f"neuroplastic: expected float32 or float64 parameters and inputs, got {sorted(map(str, odd))}; "
            "convert them with .float()"
        )
    if len(float_dtypes) > 1:
        raise TypeError(f"neuroplastic: parameters and inputs must share one dtype, got {sorted(map(str, float_dtypes))}")
    (dtype,) = float_dtypes
    if dtype == torch.float64 and backend != "reference":
        raise TypeError(
            'neuroplastic: float64 runs on the reference backend only (backend="reference"); '
            "the CPU backend computes in float32"
        )
    device = _engine_device(tensors, backend, "the parameters and the trajectory")
    if device.startswith("cuda"):
        raise RuntimeError(
            f"neuroplastic: the meta-gradient has no CUDA backend yet (tensors on {device}); use CPU tensors"
        )
    options = dict(
        inner_lr=inner_lr,
        loss=loss,
        order=order,
        truncate=truncate,
        clamp=clamp,
        gate_at=gate_at,
        device=device,
        threads=threads,
    )
    names = tuple(params)
    batched = getattr(torch._C._functorch, "is_batchedtensor", lambda t: False)
    if any(batched(t) for t in tensors):
        raise RuntimeError(
            "neuroplastic.torch.meta_loss does not run under torch.func.vmap: it is batched over tasks already; "
            "stack the tasks along the trajectory's P dimension instead"
        )
    loss_only = not (torch.is_grad_enabled() and any(t.requires_grad for t in params.values()))
    if loss_only and not _transforms():
        # No gradient can be asked of the result (torch.no_grad(), or nothing
        # requires one): the loss-only pass, bit for bit the same value, and a
        # tensor outside the graph, as any operation gives there.
        arrays = _meta_arrays(names, params.values(), trajectory.keys(), trajectory.values())
        return next(iter(params.values())).new_tensor(_native.meta_loss(*arrays, **options))
    keys = tuple(trajectory)
    return _MetaLoss.apply(names, keys, options, *params.values(), *trajectory.values())[0]


def _linear_layers(net, name: str, relu_last: bool):
    """The ``nn.Linear`` layers of ``net`` in order, after checking that it
    computes what the crate's stack ``name`` computes: ``nn.Sequential`` of
    Linear layers with a ReLU after every one (``relu_last``) or between
    them; a list of Linear layers is taken as that."""
    if isinstance(net, nn.Linear):
        net = [net]
    if isinstance(net, (list, tuple)):
        # Exactly nn.Linear: a subclass may compute something else.
        if not net or not all(type(m) is nn.Linear for m in net):
            raise TypeError(f"{name}: expected nn.Linear layers, got {[type(m).__name__ for m in net] or 'none'}")
        return list(net)
    if not isinstance(net, nn.Sequential):
        raise TypeError(
            f"{name}: expected an nn.Sequential of Linear and ReLU layers or a list of nn.Linear, got {type(net).__name__}"
        )
    kinds = [type(m).__name__ if type(m) in (nn.Linear, nn.ReLU) else f"{type(m).__name__} (not nn.Linear or nn.ReLU)" for m in net]
    layers = [m for m in net if type(m) is nn.Linear]
    want = ["Linear", "ReLU"] * len(layers)
    if not relu_last:
        want = want[:-1]
    if kinds != want or not layers:
        shape = "Linear, ReLU, …, Linear, ReLU" if relu_last else "Linear, ReLU, …, ReLU, Linear"
        raise ValueError(
            f"{name}: the crate's {name.upper()} is {shape} (dense layers with a ReLU "
            f"{'after every one' if relu_last else 'between them'}); this nn.Sequential is {', '.join(kinds) or 'empty'}"
        )
    return layers


def meta_params(pln, rln=None, nm=None, inner_lr: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """``{name: parameter}`` for :func:`meta_loss` from a script's modules.

    ``pln`` (the prediction network, the fast weights), ``rln`` (the
    representation network, optional) and ``nm`` (ANML's neuromodulatory
    network, optional): each an ``nn.Sequential`` of ``nn.Linear`` and
    ``nn.ReLU`` — a ReLU after every RLN layer, between PLN and NM layers —
    or a list of ``nn.Linear``. Another structure (another activation, a
    missing ReLU) is refused rather than computed differently. The values
    are the modules' own parameters, so gradients land in their ``.grad``.
    ``inner_lr``: a learned β (a tensor of shape ``(1,)``), if any.
    """
    if pln is None:
        raise TypeError("pln: required (the prediction network, whose weights the inner loop updates)")
    out: Dict[str, torch.Tensor] = {}
    for prefix, net, relu_last in (("rln", rln, True), ("pln", pln, False), ("nm", nm, False)):
        if net is None:
            continue
        for l, layer in enumerate(_linear_layers(net, prefix, relu_last)):
            if layer.bias is None:
                raise ValueError(f"{prefix}: layer {l} has no bias; the crate's dense layers have one (bias=True)")
            out[f"{prefix}.{l}.weight"], out[f"{prefix}.{l}.bias"] = layer.weight, layer.bias
    if inner_lr is not None:
        out["inner_lr"] = inner_lr
    return out
