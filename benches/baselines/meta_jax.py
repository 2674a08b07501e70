"""JAX baseline of `neuroplastic bench meta`: one second-order meta-gradient
(mse, fixed inner lr 0.003, float32): `jax.grad` of the mean meta-loss, the
inner SGD loop a `lax.scan` whose body takes `jax.grad` of the inner loss,
`vmap` over tasks, the whole thing under `jit`. Prints one JSON line: median
seconds (after compilation) and peak RSS (MiB).

    python benches/baselines/meta_jax.py --workload sine
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

# Run as a script: its own folder is on sys.path.
from meta_common import WORKLOADS, measure, parse_args, peak_rss_mib


def init(rng, widths):
    out = []
    for i, o in zip(widths[:-1], widths[1:]):
        a = 1.0 / np.sqrt(i)
        out.append((jnp.asarray(rng.uniform(-a, a, (o, i)), jnp.float32), jnp.asarray(rng.uniform(-a, a, (o,)), jnp.float32)))
    return out


def main():
    a = parse_args()
    rln_w, pln_w, P, S, Bi, Bo = WORKLOADS[a.workload]
    D = rln_w[0] if rln_w else pln_w[0]
    rng = np.random.default_rng(0)
    params = {"rln": init(rng, rln_w) if rln_w else [], "pln": init(rng, pln_w)}
    beta = 0.003
    f32 = lambda *s: jnp.asarray(rng.uniform(-5, 5, s), jnp.float32)
    xi, yi, xo, yo = f32(P, S, Bi, D), f32(P, S, Bi, 1), f32(P, Bo, D), f32(P, Bo, 1)

    def rep(rln, x):
        for w, b in rln:
            x = jax.nn.relu(x @ w.T + b)
        return x

    def predict(theta, h):
        for l, (w, b) in enumerate(theta):
            h = h @ w.T + b
            if l + 1 < len(theta):
                h = jax.nn.relu(h)
        return h

    def ell(theta, h, y):
        return jnp.mean(jnp.sum((predict(theta, h) - y) ** 2, axis=1))

    def task_loss(params, xi, yi, xo, yo):
        def step(theta, batch):
            x, y = batch
            g = jax.grad(ell)(theta, rep(params["rln"], x), y)
            return jax.tree_util.tree_map(lambda t, g: t - beta * g, theta, g), None

        theta, _ = jax.lax.scan(step, params["pln"], (xi, yi))
        return ell(theta, rep(params["rln"], xo), yo)

    def meta_loss(params):
        return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(params, xi, yi, xo, yo))

    f = jax.jit(jax.value_and_grad(meta_loss))
    med, reps, (loss, _) = measure(lambda: jax.block_until_ready(f(params)), a)
    peak = peak_rss_mib()
    print(json.dumps({"impl": "jax", "workload": a.workload, "median_s": med, "reps": reps,
                      "peak_rss_mib": peak, "loss": float(loss), "version": jax.__version__}))


if __name__ == "__main__":
    main()
