"""`neuroplastic.meta_grad` (numpy) and `neuroplastic.torch.meta_loss`: the
meta-gradient through an inner SGD loop against central finite differences
of its own loss in float64, float32 CPU against the f64 reference, PyTorch's
`create_graph=True` unrolled loop (when torch is installed), and the errors;
`neuroplastic.meta_loss`, the loss alone, against meta_grad's loss (bit for
bit) and errors."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import neuroplastic as npl

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "python")


def random_case(seed, *, rln=True, nm=True, gate_at=0, loss="mse", learned=True, dtype=np.float64, s=4):
    """A small meta-learner (D = 4 → RLN 7, 6 → PLN 5, O) and a trajectory of
    P = 3 tasks of S inner steps of Bi = 5 rows, Bo = 6 outer rows."""
    rng = np.random.default_rng(seed)
    d, o = 4, (3 if loss == "xent" else 2)
    p = {}

    def stack(prefix, widths):
        for l in range(len(widths) - 1):
            i, j = widths[l], widths[l + 1]
            a = 1.6 / np.sqrt(i)
            p[f"{prefix}.{l}.weight"] = rng.uniform(-a, a, (j, i)).astype(dtype)
            p[f"{prefix}.{l}.bias"] = rng.uniform(-0.3, 0.3, (j,)).astype(dtype)

    pin = 6 if rln else d
    if rln:
        stack("rln", [d, 7, 6])
    pln = [pin, 5, o]
    stack("pln", pln)
    if nm:
        stack("nm", [d, 5, pln[gate_at]])
    if learned:
        p["inner_lr"] = np.array([0.3], dtype)
    P, bi, bo = 3, 5, 6
    tr = {
        "inner.x": rng.uniform(-1.5, 1.5, (P, s, bi, d)).astype(dtype),
        "outer.x": rng.uniform(-1.5, 1.5, (P, bo, d)).astype(dtype),
    }
    if loss == "mse":
        tr["inner.y"] = rng.uniform(-1.5, 1.5, (P, s, bi, o)).astype(dtype)
        tr["outer.y"] = rng.uniform(-1.5, 1.5, (P, bo, o)).astype(dtype)
    else:
        tr["inner.y"] = rng.integers(0, o, (P, s, bi)).astype(dtype)
        tr["outer.y"] = rng.integers(0, o, (P, bo)).astype(dtype)
    return p, tr


CASES = [
    # (name, case kwargs, options)
    ("oml-second", dict(nm=False, learned=False), dict(inner_lr=0.3)),
    ("anml-gate0-learned-lr", dict(), dict()),
    ("anml-gate1-xent-clamp", dict(gate_at=1, loss="xent"), dict(loss="xent", gate_at=1, clamp=0.4)),
    ("maml-truncated", dict(rln=False, nm=False), dict(truncate=2)),
]


@pytest.mark.parametrize("name,kw,opts", CASES, ids=[c[0] for c in CASES])
def test_meta_grad_matches_finite_differences(name, kw, opts):
    p, tr = random_case(1, **kw)
    # Finite differences see the whole loop; truncation is checked after.
    full = {**opts, "truncate": 0}
    loss, g = npl.meta_grad(p, tr, device="reference", **full)
    assert set(g) == set(p) and all(g[k].shape == p[k].shape for k in p)
    rng = np.random.default_rng(2)
    h = 1e-6
    for name in sorted(p):
        for _ in range(3):
            idx = tuple(int(rng.integers(0, n)) for n in p[name].shape)
            q = {k: v.copy() for k, v in p.items()}
            q[name][idx] += h
            up, _ = npl.meta_grad(q, tr, device="reference", **full)
            q[name][idx] -= 2 * h
            down, _ = npl.meta_grad(q, tr, device="reference", **full)
            fd = (up - down) / (2 * h)
            assert abs(fd - g[name][idx]) <= 1e-6 * max(1.0, abs(fd)), (name, idx, fd, g[name][idx])
    # Truncation keeps the loss and drops the earlier steps' second-order terms.
    if opts.get("truncate"):
        lt, gt = npl.meta_grad(p, tr, device="reference", **opts)
        assert lt == loss
        assert np.abs(gt["pln.0.weight"] - g["pln.0.weight"]).max() > 1e-4


def test_first_order_drops_the_second_order_terms():
    p, tr = random_case(3, nm=False, learned=False)
    _, second = npl.meta_grad(p, tr, device="reference", inner_lr=0.3)
    _, first = npl.meta_grad(p, tr, device="reference", inner_lr=0.3, order="first")
    # The RLN only feeds the inner gradients' dependence on φ through the
    # second-order terms and the outer batch directly: both orders give a
    # gradient, and they differ.
    assert np.abs(first["rln.0.weight"] - second["rln.0.weight"]).max() > 1e-3
    # With a vanishing step the inner loop does nothing and the orders agree.
    _, s0 = npl.meta_grad(p, tr, device="reference", inner_lr=1e-9)
    _, f0 = npl.meta_grad(p, tr, device="reference", inner_lr=1e-9, order="first")
    for k in s0:
        np.testing.assert_allclose(f0[k], s0[k], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name,kw,opts", CASES, ids=[c[0] for c in CASES])
def test_float32_cpu_agrees_with_the_reference(name, kw, opts):
    p, tr = random_case(4, **kw)
    loss, want = npl.meta_grad(p, tr, device="reference", **opts)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    tr32 = {k: v.astype(np.float32) for k, v in tr.items()}
    for device in ("cpu", "reference"):
        l32, got = npl.meta_grad(p32, tr32, device=device, **opts)
        assert abs(l32 - loss) <= 1e-4 * (1 + abs(loss))
        for k in want:
            assert got[k].dtype == np.float32
            np.testing.assert_allclose(got[k], want[k], rtol=2e-3, atol=2e-4, err_msg=f"{device} {k}")
    # Deterministic whatever the number of threads: the tasks' gradients are summed in task order.
    _, one = npl.meta_grad(p32, tr32, threads=1, **opts)
    _, two = npl.meta_grad(p32, tr32, threads=2, **opts)
    for k in one:
        assert np.array_equal(one[k], two[k]), k


@pytest.mark.parametrize("fn", [npl.meta_grad, npl.meta_loss], ids=["meta_grad", "meta_loss"])
def test_errors_name_the_argument(fn):
    p, tr = random_case(5, nm=False, learned=False)

    def fails(exc, match, params=p, traj=tr, **opts):
        with pytest.raises(exc, match=match):
            fn(params, traj, device="reference", **{"inner_lr": 0.1, **opts})

    fails(ValueError, r'unknown tensor "pln\.0\.wieght"', params={**p, "pln.0.wieght": p["pln.0.weight"]})
    fails(ValueError, r'missing "pln\.1\.bias"', params={k: v for k, v in p.items() if k != "pln.1.bias"})
    fails(ValueError, r'"rln\.3\.weight" does not follow', params={**p, "rln.3.weight": p["rln.0.weight"]})
    fails(ValueError, r'missing "pln\.0\.weight"', params={k: v for k, v in p.items() if not k.startswith("pln")})
    fails(ValueError, r"pln\.0\.weight.*has 5 inputs", params={**p, "pln.0.weight": p["pln.0.weight"][:, :5]})
    fails(ValueError, r'params\["pln\.1\.weight"\]: has shape \(2, 5, 1\)', params={**p, "pln.1.weight": p["pln.1.weight"][..., None]})
    fails(ValueError, "β is given twice", params={**p, "inner_lr": np.array([0.2])})
    with pytest.raises(ValueError, match="β is missing"):
        fn(p, tr, device="reference")
    fails(ValueError, r'trajectory\["outer\.y"\]', traj={**tr, "outer.y": tr["outer.y"][:, :, :1]})
    fails(ValueError, r'missing "inner\.y"', traj={k: v for k, v in tr.items() if k != "inner.y"})
    fails(ValueError, r'unknown tensor "inner\.z"', traj={**tr, "inner.z": tr["inner.x"]})
    fails(ValueError, r"outer\.x", traj={**tr, "outer.x": tr["outer.x"][:2]})
    fails(ValueError, "loss: unknown value", loss="l1")
    fails(ValueError, "order: unknown value", order="third")
    fails(ValueError, "truncate = 2 with order", order="first", truncate=2)
    fails(ValueError, "gate_at = 2 but the PLN has 2 layers", gate_at=2)
    fails(ValueError, "clamp = -1", clamp=-1.0)
    fails(ValueError, "threads", threads=0)
    bad = {**tr, "inner.x": tr["inner.x"].copy()}
    bad["inner.x"][1, 2, 3, 0] = np.nan
    fails(ValueError, "task 1, inner step 2, row 3", traj=bad)
    with pytest.raises(TypeError, match="float64 arrays run on device=\"reference\""):
        fn(p, tr, inner_lr=0.1)
    with pytest.raises(TypeError, match=r'params\["pln\.0\.bias"\]: expected a float64 array, got float32'):
        fn({**p, "pln.0.bias": p["pln.0.bias"].astype(np.float32)}, tr, inner_lr=0.1, device="reference")
    with pytest.raises(RuntimeError, match="cuda"):
        fn(p, tr, inner_lr=0.1, device="cuda")
    with pytest.raises(TypeError, match="params: expected a dict"):
        fn([1, 2], tr, inner_lr=0.1)


def meta_outcome(fn, *args, **kwargs):
    """What a call returns or raises: the value, or the exception's type and message."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - compared whole
        return type(e), str(e)


@pytest.mark.parametrize("name,kw,opts", CASES, ids=[c[0] for c in CASES])
def test_meta_loss_is_meta_grads_loss_bit_for_bit(name, kw, opts):
    for s in (4, 0):
        p, tr = random_case(18, s=s, **kw)
        p32 = {k: v.astype(np.float32) for k, v in p.items()}
        tr32 = {k: v.astype(np.float32) for k, v in tr.items()}
        for params, traj, device in ((p, tr, "reference"), (p32, tr32, "reference"), (p32, tr32, "cpu")):
            want, _ = npl.meta_grad(params, traj, device=device, **opts)
            for threads in (1, 2):
                got = npl.meta_loss(params, traj, device=device, threads=threads, **opts)
                assert type(got) is float and got == want, (name, s, device, threads, got, want)
    # The order and the truncation are checked but do not change the value;
    # the clamp and β do.
    p, tr = random_case(19, nm=False, learned=False)
    base = npl.meta_loss(p, tr, inner_lr=0.3, device="reference")
    assert npl.meta_loss(p, tr, inner_lr=0.3, device="reference", order="first") == base
    assert npl.meta_loss(p, tr, inner_lr=0.3, device="reference", truncate=1) == base
    assert npl.meta_loss(p, tr, inner_lr=0.3, device="reference", clamp=0.01) != base
    assert npl.meta_loss(p, tr, inner_lr=0.2, device="reference") != base


def test_meta_loss_fails_as_meta_grad_does():
    p, tr = random_case(20, nm=False, learned=False, dtype=np.float32)
    # Outputs so large that the loss leaves float32 (with β = 0: only the
    # values can be to blame).
    huge = {**p, "pln.0.weight": np.full_like(p["pln.0.weight"], 1e20)}
    nan = {**tr, "outer.x": tr["outer.x"].copy()}
    nan["outer.x"][2, 1, 3] = np.inf
    calls = [
        ((p, tr), dict(inner_lr=1e6)),  # the inner loop diverges
        ((p, tr), dict(inner_lr=1e300)),
        ((huge, tr), dict(inner_lr=0.0)),
        ((huge, tr), dict(inner_lr=0.0, device="reference")),
        ((p, nan), dict(inner_lr=0.1)),
        ((p, tr), dict(inner_lr=0.1, gate_at=5)),
        ((p, tr), dict(inner_lr=0.1, order="first", truncate=1)),
        ((p, tr), dict(inner_lr=0.1, device="gpu")),
        ((p, {**tr, "outer.y": tr["outer.y"][:1]}), dict(inner_lr=0.1)),
    ]
    for args, opts in calls:
        want = meta_outcome(npl.meta_grad, *args, **opts)
        assert isinstance(want, tuple) and isinstance(want[0], type), (opts, want)
        assert meta_outcome(npl.meta_loss, *args, **opts) == want, opts
    # A loss that float32 holds while its gradient overflows: meta_grad
    # refuses the gradient; meta_loss, which computes none, returns the loss.
    big = {**p, "pln.0.weight": np.full_like(p["pln.0.weight"], 1e18)}
    with pytest.raises(ValueError, match="meta-gradient of `rln.0.weight`"):
        npl.meta_grad(big, tr, inner_lr=0.0)
    assert 1e35 < npl.meta_loss(big, tr, inner_lr=0.0) < 1e36
    # The reference computes the gradient in f64, where it fits: the same loss.
    assert npl.meta_loss(big, tr, inner_lr=0.0, device="reference") == npl.meta_grad(big, tr, inner_lr=0.0, device="reference")[0]


def test_huge_inner_lr_is_an_overflow_error_not_a_nan_gradient():
    p, tr = random_case(6, nm=False, learned=False, s=8)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    tr32 = {k: v.astype(np.float32) for k, v in tr.items()}
    with pytest.raises(ValueError, match="inner_lr|β"):
        npl.meta_grad(p32, tr32, inner_lr=1e6)


# ---------------------------------------------------------------- PyTorch


def torch_unrolled(params, tr, *, inner_lr=None, loss="mse", order="second", truncate=0, clamp=0.0, gate_at=0):
    """The meta-loss and gradient as OML/ANML scripts compute them (the inner
    loop unrolled with `torch.autograd.grad(..., create_graph=True)`, float64):
    `examples/python/meta_check.py`'s reference, given the options as the
    meta-learner file's metadata."""
    pytest.importorskip("torch")
    sys.path.insert(0, EXAMPLES)
    from meta_check import torch_meta_grad

    meta = {
        "neuroplastic.meta.loss": loss,
        "neuroplastic.meta.order": order,
        "neuroplastic.meta.truncate": str(truncate),
        "neuroplastic.meta.clamp": str(clamp),
        "neuroplastic.meta.gate_at": str(gate_at),
    }
    if inner_lr is not None:
        meta["neuroplastic.meta.inner_lr"] = str(inner_lr)
    return torch_meta_grad(params, meta, tr)


@pytest.mark.parametrize("name,kw,opts", CASES, ids=[c[0] for c in CASES])
def test_torch_meta_loss_matches_the_unrolled_loop(name, kw, opts):
    torch = pytest.importorskip("torch")
    from neuroplastic.torch import meta_loss

    p, tr = random_case(7, **kw)
    want_loss, want = torch_unrolled(p, tr, **opts)
    for dtype, backend, tol in ((torch.float64, "reference", 1e-9), (torch.float32, "cpu", 2e-3)):
        params = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in p.items()}
        traj = {k: torch.tensor(v, dtype=dtype) for k, v in tr.items()}
        ours = meta_loss(params, traj, backend=backend, **opts)
        (2.5 * ours).backward()  # the incoming gradient scales ours
        assert ours.dtype == dtype and ours.dim() == 0
        assert abs(float(ours.detach()) - want_loss) <= tol * (1 + abs(want_loss))
        for k in p:
            np.testing.assert_allclose(
                params[k].grad.double().numpy(), 2.5 * want[k], rtol=tol, atol=tol, err_msg=f"{backend} {k}"
            )


def test_torch_meta_loss_trains_and_refuses_bad_input():
    torch = pytest.importorskip("torch")
    from neuroplastic.torch import meta_loss

    p, tr = random_case(8, nm=False, learned=False, dtype=np.float32)
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in p.items()}
    traj = {k: torch.tensor(v) for k, v in tr.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = meta_loss(params, traj, inner_lr=0.3)
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(meta_loss(params, traj, inner_lr=0.3).detach()) < 0.8 * first
    # Only the tensors that require a gradient get one.
    frozen = {k: (v.detach() if k.startswith("rln") else v) for k, v in params.items()}
    for v in params.values():
        v.grad = None
    meta_loss(frozen, traj, inner_lr=0.3).backward()
    assert params["rln.0.weight"].grad is None and params["pln.0.weight"].grad is not None
    with pytest.raises(ValueError, match="require gradients"):
        meta_loss(params, {**traj, "inner.x": traj["inner.x"].clone().requires_grad_()}, inner_lr=0.3)
    with pytest.raises(TypeError, match='backend="reference"'):
        meta_loss({k: v.double() for k, v in params.items()}, {k: v.double() for k, v in traj.items()}, inner_lr=0.3)
    with pytest.raises(ValueError, match="backend: unknown value"):
        meta_loss(params, traj, inner_lr=0.3, backend="gpu")


def test_torch_meta_loss_without_a_gradient_runs_the_loss_only_pass(monkeypatch):
    torch = pytest.importorskip("torch")
    import neuroplastic.torch as nt
    from neuroplastic.torch import meta_loss

    p, tr = random_case(21, gate_at=1, learned=True, dtype=np.float32)
    params = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    traj = {k: torch.tensor(v) for k, v in tr.items()}
    opts = dict(clamp=0.5, gate_at=1, order="first")
    with_grad = meta_loss(params, traj, **opts)
    assert with_grad.requires_grad
    with_grad.backward()
    assert params["pln.0.weight"].grad is not None

    def no_gradient_wanted(*args, **kwargs):
        raise AssertionError("meta_grad called where no gradient can be asked")

    monkeypatch.setattr(nt._native, "meta_grad", no_gradient_wanted)
    detached = {k: v.detach() for k, v in params.items()}
    with torch.no_grad():
        quiet = meta_loss(params, traj, **opts)
    for loss in (quiet, meta_loss(detached, traj, **opts)):
        assert loss.dtype == torch.float32 and loss.dim() == 0
        assert torch.equal(loss, with_grad.detach())
        assert not loss.requires_grad and loss.grad_fn is None
        with pytest.raises(RuntimeError, match="does not require grad"):
            loss.backward()
    # The arguments are refused as with a gradient.
    with torch.no_grad():
        with pytest.raises(ValueError, match="order: unknown value"):
            meta_loss(params, traj, order="third")
        with pytest.raises(ValueError, match="truncate = 1 with order"):
            meta_loss(params, traj, order="first", truncate=1)
        with pytest.raises(ValueError, match="gate_at = 2"):
            meta_loss(params, traj, gate_at=2)
        with pytest.raises(ValueError, match="β is given twice"):
            meta_loss(params, traj, inner_lr=0.3)
        with pytest.raises(ValueError, match="require gradients"):
            meta_loss(params, {**traj, "inner.x": traj["inner.x"].clone().requires_grad_()})
        f64 = {k: v.double() for k, v in detached.items()}
        assert float(meta_loss(f64, {k: v.double() for k, v in traj.items()}, backend="reference", **opts)) == (
            npl.meta_loss({k: v.numpy() for k, v in f64.items()}, {k: v.double().numpy() for k, v in traj.items()},
                          device="reference", **opts)
        )
    monkeypatch.undo()
    # With a gradient wanted again, the autograd function runs.
    assert meta_loss(params, traj, **opts).grad_fn is not None


def test_meta_params_maps_modules_and_refuses_other_structures():
    torch = pytest.importorskip("torch")
    from torch import nn

    from neuroplastic.torch import meta_loss, meta_params

    torch.manual_seed(0)
    rln = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU())
    pln = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    nm = [nn.Linear(4, 6)]
    beta = nn.Parameter(torch.tensor([0.3]))
    params = meta_params(pln, rln=rln, nm=nm, inner_lr=beta)
    assert list(params) == [
        "rln.0.weight", "rln.0.bias", "rln.1.weight", "rln.1.bias",
        "pln.0.weight", "pln.0.bias", "pln.1.weight", "pln.1.bias",
        "nm.0.weight", "nm.0.bias", "inner_lr",
    ]
    assert params["rln.1.weight"] is rln[2].weight and params["nm.0.bias"] is nm[0].bias
    _, tr = random_case(9, dtype=np.float32)
    traj = {k: torch.tensor(v) for k, v in tr.items()}
    meta_loss(params, traj).backward()
    assert rln[0].weight.grad is not None and nm[0].weight.grad is not None and beta.grad is not None
    # With no inner step the meta-loss is the outer loss of the modules as a
    # script runs them (NM gating the PLN's input): the mapping keeps their meaning.
    _, tr0 = random_case(10, dtype=np.float32, s=0)
    traj0 = {k: torch.tensor(v) for k, v in tr0.items()}
    with torch.no_grad():
        x, y = traj0["outer.x"], traj0["outer.y"]
        z = pln(rln(x) * torch.sigmoid(nm[0](x)))
        want = ((z - y) ** 2).sum(-1).mean()
        got = meta_loss(params, traj0)
    assert abs(float(got) - float(want)) <= 1e-5 * (1 + abs(float(want)))
    with pytest.raises(ValueError, match="ReLU after every one"):
        meta_params(pln, rln=nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 6)))
    with pytest.raises(ValueError, match="Tanh"):
        meta_params(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match="no bias"):
        meta_params([nn.Linear(6, 2, bias=False)])
    with pytest.raises(TypeError, match="nn.Sequential"):
        meta_params(nn.LSTM(6, 2))


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_torch_meta_loss_refuses_a_second_derivative():
    torch = pytest.importorskip("torch")
    from neuroplastic.torch import meta_loss

    p, tr = random_case(11, nm=False, learned=False, dtype=np.float32)
    params = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    traj = {k: torch.tensor(v) for k, v in tr.items()}
    # The gradient is exact but a constant to autograd: a Hessian-vector
    # product through it would be silently zero, so create_graph is refused.
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        torch.autograd.grad(meta_loss(params, traj, inner_lr=0.3), [params["pln.0.weight"]], create_graph=True)
    with pytest.raises(RuntimeError, match="create_graph"):
        meta_loss(params, traj, inner_lr=0.3).backward(create_graph=True)
    # Without it, the gradient is there.
    (g,) = torch.autograd.grad(meta_loss(params, traj, inner_lr=0.3), [params["pln.0.weight"]])
    assert g.shape == params["pln.0.weight"].shape and g.abs().sum() > 0


def test_torch_func_grad_goes_through_meta_loss():
    torch = pytest.importorskip("torch")
    from neuroplastic.torch import meta_loss

    for name, kw, opts in CASES:
        p, tr = random_case(13, dtype=np.float32, **kw)
        traj = {k: torch.tensor(v) for k, v in tr.items()}
        leaves = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
        meta_loss(leaves, traj, **opts).backward()
        plain = {k: torch.tensor(v) for k, v in p.items()}

        def f(q):
            return meta_loss(q, traj, **opts)

        g = torch.func.grad(f)(plain)
        assert set(g) == set(p)
        for k in p:
            assert torch.equal(g[k], leaves[k].grad), f"{name}: {k}"
        _, value = torch.func.grad_and_value(f)(plain)
        assert value.item() == np.float32(npl.meta_grad(p, tr, **opts)[0]), name
        # Over one tensor, the others held fixed.
        one = "pln.0.bias"
        g1 = torch.func.grad(lambda b: meta_loss({**plain, one: b}, traj, **opts))(plain[one])
        assert torch.equal(g1, leaves[one].grad), name
        # jacrev of a scalar is its gradient.
        jac = torch.func.jacrev(f)(plain)
        assert all(torch.equal(jac[k], leaves[k].grad) for k in p), name


def test_torch_func_transforms_that_need_more_are_refused():
    torch = pytest.importorskip("torch")
    from neuroplastic.torch import meta_loss

    p, tr = random_case(14, nm=False, learned=False, dtype=np.float32)
    plain = {k: torch.tensor(v) for k, v in p.items()}
    traj = {k: torch.tensor(v) for k, v in tr.items()}

    def f(q):
        return meta_loss(q, traj, inner_lr=0.3)

    # A second derivative through the engine's gradient would be silently zero.
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        torch.func.grad(lambda q: torch.func.grad(f)(q)["pln.0.bias"].sum())(plain)
    # vjp builds a graph of the backward: refused the same way.
    _, vjp = torch.func.vjp(f, plain)
    with pytest.raises(RuntimeError, match="torch.func.vjp"):
        vjp(torch.tensor(1.0))
    # vmap: the tasks are batched along P already.
    with pytest.raises(RuntimeError, match="vmap"):
        torch.func.vmap(lambda b: f({**plain, "pln.0.bias": b}))(torch.zeros(2, *plain["pln.0.bias"].shape))


# ------------------------------------------- what a break-it audit found


def test_arrays_numpy_can_view_but_not_stride_by_elements_are_read_right():
    p, tr = random_case(12, nm=False, learned=False, dtype=np.float32)
    w = p["pln.1.weight"]
    # A float32 field of packed records: byte strides that are not multiples of 4.
    rec = np.zeros(w.shape, dtype=[("w", np.float32), ("flag", np.int16)])
    rec["w"] = w
    assert rec["w"].strides[-1] % 4 != 0
    want, gw = npl.meta_grad(p, tr, inner_lr=0.3)
    got, gg = npl.meta_grad({**p, "pln.1.weight": rec["w"]}, tr, inner_lr=0.3)
    assert got == want and all(np.array_equal(gg[k], gw[k]) for k in gw)
    # Big-endian data is refused with what to do, not read as garbage.
    with pytest.raises(TypeError, match=r"byte order.*astype"):
        npl.meta_grad({**p, "pln.1.weight": w.astype(">f4")}, tr, inner_lr=0.3)
    with pytest.raises(TypeError, match="numpy scalar"):
        npl.meta_grad(p, {**tr, "inner.x": np.float32(1)}, inner_lr=0.3)


def test_copies_beyond_the_memory_are_refused_before_they_are_made(monkeypatch):
    p, tr = random_case(13, nm=False, learned=False, dtype=np.float32)
    monkeypatch.setenv("NEUROPLASTIC_MEMORY_LIMIT", "10M")
    huge = np.broadcast_to(np.float32(0), (3, 10**6, 5, 4))  # 240 MB once copied, nothing in numpy
    with pytest.raises(MemoryError, match=r'trajectory\["inner\.x"\]'):
        npl.meta_grad(p, {**tr, "inner.x": huge}, inner_lr=0.3)


def test_a_forked_child_computes_and_thread_pools_stay_bounded():
    import os
    import time

    from conftest import in_forked_child

    p, tr = random_case(14, nm=False, learned=False, dtype=np.float32)
    want, _ = npl.meta_grad(p, tr, inner_lr=0.3, threads=2)
    npl.meta_grad(p, tr, inner_lr=0.3)
    assert in_forked_child(lambda: npl.meta_grad(p, tr, inner_lr=0.3, threads=2)[0]) == want
    assert in_forked_child(lambda: npl.meta_grad(p, tr, inner_lr=0.3)[0]) == want
    before = len(os.listdir("/proc/self/task"))
    for n in range(1, 9):
        npl.meta_grad(p, tr, inner_lr=0.3, threads=n)
    # Only the last two sizes stay (8 + 7 threads); dropped pools' threads
    # exit on their own, shortly.
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/task")) > before + 8 + 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/task")) <= before + 8 + 7
    with pytest.raises(ValueError, match=r"threads = 1000000: expected 1"):
        npl.meta_grad(p, tr, inner_lr=0.3, threads=10**6)


@pytest.mark.parametrize("fn", [npl.meta_grad, npl.meta_loss], ids=["meta_grad", "meta_loss"])
def test_options_of_the_wrong_kind_are_named(fn):
    p, tr = random_case(15, nm=False, learned=False)
    cases = [
        (dict(truncate=-1), ValueError, "truncate: expected a whole number"),
        (dict(gate_at=2**70), ValueError, "gate_at: expected a whole number"),
        (dict(threads=True), TypeError, "threads: expected a whole number"),
        (dict(truncate=1.5), TypeError, "truncate: expected a whole number"),
        (dict(clamp="1"), TypeError, "clamp: expected a number"),
        (dict(loss=3), TypeError, "loss: expected"),
    ]
    for opts, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn(p, tr, device="reference", **{"inner_lr": 0.1, **opts})
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    tr32 = {k: v.astype(np.float32) for k, v in tr.items()}
    with pytest.raises(ValueError, match=r"inner_lr = 1e300: expected a finite number that float32 can hold"):
        fn(p32, tr32, inner_lr=1e300)
    with pytest.raises(ValueError, match="leading zeros"):
        fn({**p, "pln.01.weight": p["pln.1.weight"]}, tr, device="reference", inner_lr=0.1)
    with pytest.raises(TypeError, match=r"keys must be strings, got 0"):
        fn({**p, 0: p["pln.1.weight"]}, tr, device="reference", inner_lr=0.1)


def test_float32_on_the_reference_refuses_what_float32_cannot_hold():
    p, tr = random_case(16, nm=False, learned=False, dtype=np.float32)
    p = {**p, "pln.0.weight": np.full_like(p["pln.0.weight"], 1e19)}
    for device in ("cpu", "reference"):
        # With β = 0 nothing diverged: the message blames the values, not β.
        with pytest.raises(ValueError, match="meta-loss|meta-gradient") as e:
            npl.meta_grad(p, tr, inner_lr=0.0, device=device)
        assert "β = 0" in str(e.value) and "Lower β" not in str(e.value), str(e.value)


def test_torch_meta_loss_refuses_traps():
    torch = pytest.importorskip("torch")
    from torch import nn

    from neuroplastic.torch import meta_loss, meta_params

    p, tr = random_case(17, nm=False, learned=False, dtype=np.float32)
    params = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    traj = {k: torch.tensor(v) for k, v in tr.items()}
    # A tensor as the fixed β would silently get no gradient.
    with pytest.raises(TypeError, match=r"params\['inner_lr'\]"):
        meta_loss(params, traj, inner_lr=nn.Parameter(torch.tensor([0.3])))
    # A second backward without retain_graph is refused, as for any graph.
    loss = meta_loss(params, traj, inner_lr=0.3)
    loss.backward()
    with pytest.raises(RuntimeError, match="second time|freed"):
        loss.backward()
    # With retain_graph it accumulates.
    for v in params.values():
        v.grad = None
    loss = meta_loss(params, traj, inner_lr=0.3)
    loss.backward(retain_graph=True)
    once = params["pln.0.weight"].grad.clone()
    loss.backward()
    assert torch.allclose(params["pln.0.weight"].grad, 2 * once)
    # Values that are not tensors, odd dtypes and layouts are named.
    with pytest.raises(TypeError, match=r"params\['pln\.0\.bias'\]: expected a torch\.Tensor, got ndarray"):
        meta_loss({**params, "pln.0.bias": p["pln.0.bias"]}, traj, inner_lr=0.3)
    with pytest.raises(TypeError, match="bfloat16"):
        meta_loss({k: v.detach().bfloat16() for k, v in params.items()}, {k: v.bfloat16() for k, v in traj.items()}, inner_lr=0.3)
    with pytest.raises(TypeError, match="layout"):
        meta_loss({**params, "pln.0.bias": params["pln.0.bias"].detach().to_sparse()}, traj, inner_lr=0.3)

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match="Scaled"):
        meta_params([Scaled(6, 2)])
    with pytest.raises(TypeError, match="Scaled"):
        meta_params(Scaled(6, 2))
    with pytest.raises(TypeError, match="pln: required"):
        meta_params(None)
