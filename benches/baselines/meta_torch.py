"""PyTorch baseline of `neuroplastic bench meta`: one second-order meta-gradient
(mse, fixed inner lr 0.003, float32) written as OML/ANML users write it: a
loop over tasks, each unrolling its inner SGD loop with
`torch.autograd.grad(..., create_graph=True)`, then one `backward()` of the
mean meta-loss. Prints one JSON line: median seconds and peak RSS (MiB).

    python benches/baselines/meta_torch.py --workload sine
"""

import json

import torch

# Run as a script: its own folder is on sys.path.
from meta_common import WORKLOADS, measure, parse_args, peak_rss_mib, rss_mib


def linear_stack(widths):
    return torch.nn.ModuleList(torch.nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))


def main():
    a = parse_args()
    rln_w, pln_w, P, S, Bi, Bo = WORKLOADS[a.workload]
    D = rln_w[0] if rln_w else pln_w[0]
    torch.manual_seed(0)
    rln = linear_stack(rln_w) if rln_w else torch.nn.ModuleList()
    pln = linear_stack(pln_w)
    beta = 0.003
    xi = torch.empty(P, S, Bi, D).uniform_(-5, 5)
    yi = torch.empty(P, S, Bi, 1).uniform_(-5, 5)
    xo = torch.empty(P, Bo, D).uniform_(-5, 5)
    yo = torch.empty(P, Bo, 1).uniform_(-5, 5)

    def rep(x):
        for layer in rln:
            x = torch.relu(layer(x))
        return x

    def predict(theta, h):
        for l in range(len(pln)):
            h = torch.nn.functional.linear(h, theta[2 * l], theta[2 * l + 1])
            if l + 1 < len(pln):
                h = torch.relu(h)
        return h

    def meta_step():
        for p in list(rln.parameters()) + list(pln.parameters()):
            p.grad = None
        total = 0.0
        for p in range(P):
            theta = [t for layer in pln for t in (layer.weight, layer.bias)]
            for k in range(S):
                loss = ((predict(theta, rep(xi[p, k])) - yi[p, k]) ** 2).sum(1).mean()
                grads = torch.autograd.grad(loss, theta, create_graph=True)
                theta = [t - beta * g for t, g in zip(theta, grads)]
            total = total + ((predict(theta, rep(xo[p])) - yo[p]) ** 2).sum(1).mean()
        total = total / P
        total.backward()
        return float(total.detach())

    start = rss_mib()
    med, reps, loss = measure(meta_step, a)
    peak = peak_rss_mib()
    print(json.dumps({"impl": "pytorch", "workload": a.workload, "median_s": med, "reps": reps,
                      "peak_rss_mib": peak, "start_rss_mib": start, "loss": loss, "threads": torch.get_num_threads(),
                      "version": torch.__version__}))


if __name__ == "__main__":
    main()
