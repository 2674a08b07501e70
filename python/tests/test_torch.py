"""The PyTorch layers: agreement with a plain PyTorch implementation (float32,
CPU backend), torch.autograd.gradcheck (float64, reference backend), use in a
training step, and errors. Skipped, with a message, when torch is absent."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the neuroplastic.torch tests are skipped")

import neuroplastic as npl  # noqa: E402
from neuroplastic.torch import (  # noqa: E402
    ModulatedPlasticRNN,
    PlasticRNN,
    PlasticState,
    RetroactivePlasticRNN,
    plastic_episode,
)

from plain_plastic import PlainPlasticRNN  # noqa: E402

VARIANTS = [
    (PlasticRNN, dict(rule="hebb")),
    (PlasticRNN, dict(rule="oja", alpha="neuron", bias=True)),
    (PlasticRNN, dict(rule="hebb", alpha="scalar", activation="identity", input_map="direct")),
    (ModulatedPlasticRNN, dict(clip=2.0)),
    (ModulatedPlasticRNN, dict(modulators=2, modulator="sigmoid", fanout=True, fanout_bias=True, clip=2.0)),
    (RetroactivePlasticRNN, dict(clip=2.0)),
    (RetroactivePlasticRNN, dict(modulator="identity", modulator_bias=False, alpha="neuron", clip=2.0)),
]


def _ids(v):
    cls, kw = v
    return cls.__name__ + "-" + "-".join(f"{k}={val}" for k, val in kw.items())


def _randomize(module, gen, scale=0.4):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in ("eta", "eta_e"):
                p.uniform_(0.1, 0.5, generator=gen)
            else:
                p.normal_(0.0, scale, generator=gen)


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_matches_plain_pytorch(variant):
    """Outputs, final state and every gradient (parameters, inputs, initial
    state) of the float32 CPU path agree with plain PyTorch autograd to 1e-4."""
    cls, kw = variant
    gen = torch.Generator().manual_seed(7)
    n = 6
    x_size = n if kw.get("input_map") == "direct" else 3
    module = cls(x_size, n, threads=2, **kw)
    # A linear layer with weights of 0.4 grows without bound over 11 steps.
    _randomize(module, gen, scale=0.15 if kw.get("activation") == "identity" else 0.4)
    plain = PlainPlasticRNN(module.config)
    plain.load_state_dict(module.state_dict())

    b, t = 3, 11
    x = torch.randn(b, t, x_size, generator=gen)
    h0 = 0.3 * torch.randn(b, n, generator=gen)
    hebb0 = 0.2 * torch.randn(b, n, n, generator=gen)
    elig0 = 0.2 * torch.randn(b, n, n, generator=gen) if module.config.rule == "retroactive" else None
    ry = torch.randn(b, t, n, generator=gen)
    rh = torch.randn(b, n, n, generator=gen)

    results = []
    for m in (module, plain):
        xs = x.clone().requires_grad_()
        state = [s.clone().requires_grad_() if s is not None else None for s in (h0, hebb0, elig0)]
        y, last = m(xs, tuple(state))
        last_h, last_hebb = last[0], last[1]
        loss = (y * ry).sum() + (last_hebb * rh).sum() + last_h.square().sum()
        m.zero_grad()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in m.named_parameters()}
        grads["x"] = xs.grad
        grads.update({k: s.grad for k, s in zip(("h0", "hebb0", "elig0"), state) if s is not None})
        results.append((y.detach(), [v.detach() for v in last if v is not None], grads))
    (y1, last1, g1), (y2, last2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-4)
    for a, b_ in zip(last1, last2):
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-4)
    assert set(g1) == set(g2)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_gradcheck_float64_reference(variant):
    cls, kw = variant
    gen = torch.Generator().manual_seed(3)
    n = 3
    x_size = n if kw.get("input_map") == "direct" else 2
    module = cls(x_size, n, backend="reference", dtype=torch.float64, **kw)
    _randomize(module, gen, scale=0.5)
    # The parameters enter as gradcheck inputs through functional_call, so
    # the module's own forward (names, dtype and device checks) is checked.
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    b, t = 2, 4
    x = torch.randn(b, t, x_size, dtype=torch.float64, generator=gen, requires_grad=True)
    h0 = (0.3 * torch.randn(b, n, dtype=torch.float64, generator=gen)).requires_grad_()
    hebb0 = (0.2 * torch.randn(b, n, n, dtype=torch.float64, generator=gen)).requires_grad_()
    retro = module.config.rule == "retroactive"
    elig0 = (0.2 * torch.randn(b, n, n, dtype=torch.float64, generator=gen)).requires_grad_() if retro else None

    def episode(x, h0, hebb0, *rest):
        elig = rest[0] if retro else None
        ps = rest[1:] if retro else rest
        y, last = torch.func.functional_call(module, dict(zip(names, ps)), (x, (h0, hebb0, elig)))
        return (y, *(v for v in last if v is not None))

    inputs = (x, h0, hebb0, *([elig0] if retro else []), *params)
    assert torch.autograd.gradcheck(episode, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_training_step_fills_grad_and_learns():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"rnn": ModulatedPlasticRNN(4, 16, clip=2.0), "head": torch.nn.Linear(16, 4)})
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x = torch.randn(8, 12, 4)
    target = torch.roll(x, 1, dims=1)
    losses = []
    for _ in range(30):
        y, _ = model["rnn"](x)
        loss = torch.nn.functional.mse_loss(model["head"](y), target)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_state_continues_the_episode():
    torch.manual_seed(1)
    m = RetroactivePlasticRNN(3, 5, clip=2.0)
    x = torch.randn(2, 9, 3)
    y, last = m(x)
    assert isinstance(last, PlasticState) and last.elig is not None
    y1, mid = m(x[:, :4])
    y2, last2 = m(x[:, 4:], mid)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(last2.hebb, last.hebb)


def test_truncation_and_checkpoint_options_reach_the_engine():
    torch.manual_seed(2)
    full = PlasticRNN(3, 5)
    cut = PlasticRNN(3, 5, truncate=("last", 2), checkpoint=3)
    cut.load_state_dict(full.state_dict())
    assert cut.engine("cpu").truncate == ("last", 2) and cut.engine("cpu").checkpoint == 3
    x = torch.randn(2, 8, 3)
    for m in (full, cut):
        y, _ = m(x)
        y[:, :-2].sum().backward()  # only steps the truncation drops
    assert full.w.grad.abs().sum() > 0
    assert torch.all(cut.w.grad == 0)


def test_errors():
    m = PlasticRNN(3, 5)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, 3\) \(batch first\), got shape \(8, 3\)"):
        m(torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"^inputs: expected shape \(B, T, 3\)"):
        m(torch.randn(2, 8, 4))
    with pytest.raises(TypeError, match=r'float64 runs on the reference backend only \(backend="reference"\)'):
        m.double()(torch.randn(2, 8, 3, dtype=torch.float64))
    m = PlasticRNN(3, 5)
    with pytest.raises(TypeError, match=r"must share one dtype"):
        m(torch.randn(2, 8, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r'backend: unknown value "gpu"'):
        PlasticRNN(3, 5, backend="gpu")
    with pytest.raises(ValueError, match=r"^truncate \(K\) must be at least 1, got 0$"):
        PlasticRNN(3, 5, truncate=("windows", 0))
    with pytest.raises(ValueError, match=r"must be on one device"):
        m(torch.randn(2, 8, 3, device="meta"))
    with pytest.raises(ValueError, match=r"^params\.eta = 1\.5 is out of range"):
        with torch.no_grad():
            m.eta.fill_(1.5)
        m(torch.randn(2, 8, 3))


def test_cuda_tensors_get_the_crates_error():
    """The CUDA engine is asked for, and the crate says it is unavailable; no
    tensor is copied to the host behind the user's back."""
    from types import SimpleNamespace

    from neuroplastic.torch import _engine_device

    # Tensors on GPU 1 ask for the engine "cuda:1" (checked without a GPU
    # through stand-ins that only have a device) ...
    on = lambda d: SimpleNamespace(device=torch.device(d))  # noqa: E731
    assert _engine_device([on("cuda:1"), on("cuda:1")], "cpu") == "cuda:1"
    assert _engine_device([on("cpu")], "reference") == "reference"
    with pytest.raises(ValueError, match=r"must be on one device, got cpu, cuda:1"):
        _engine_device([on("cuda:1"), on("cpu")], "cpu")
    # ... and that engine is the crate's error.
    m = PlasticRNN(3, 5)
    with pytest.raises(RuntimeError, match=r"^cuda:1 backend unavailable"):
        m.engine("cuda:1")
    if not torch.cuda.is_available():
        pytest.skip("no GPU: the CUDA-tensor path of forward is checked through _engine_device and engine('cuda:1') only")
    with pytest.raises(RuntimeError, match=r"^cuda:0 backend unavailable"):
        m.cuda()(torch.randn(2, 8, 3, device="cuda"))


def test_numpy_and_torch_names_agree():
    m = RetroactivePlasticRNN(3, 5, fanout=True, fanout_bias=True)
    assert list(m.named_plastic_params()) == list(npl.LayerConfig("retroactive", 5, 3, fanout=True, fanout_bias=True).param_shapes())
    assert [n for n, _ in m.named_parameters()] == [
        "w",
        "alpha",
        "eta_e",
        "u",
        "mod_v",
        "mod_c",
        "mod_fanout",
        "mod_fanout_bias",
    ]


def test_deepcopy_and_pickle_rebuild_the_engine():
    import copy
    import io

    torch.manual_seed(4)
    m = ModulatedPlasticRNN(3, 5, clip=2.0, truncate=("last", 4))
    x = torch.randn(2, 6, 3)
    y, _ = m(x)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    for other in (copy.deepcopy(m), torch.load(buf, weights_only=False)):
        assert other.config == m.config and other.engine("cpu").truncate == ("last", 4)
        torch.testing.assert_close(other(x)[0], y)
