"""Benchmark the networks' training step: time per Adam step of each architecture, as ratios, one process.

One step = forward, L1 loss, backward and Adam update on a batch of random
patches, the demo's shape by default (``--batch 16``, ``--patch 15``,
``--features 16``, ``--dropout 0.2``), on ``--device`` with ``--threads``
CPU threads. Each architecture runs ``--warmup`` untimed steps, then
``--steps`` timed ones; rounds alternate between the architectures
(``--rounds``) so that a busy moment of a shared machine hits all of them.
Prints the median seconds per step and the ratio to ``--reference``
(default ``dilated``). Read the ratios, not the seconds.

Usage: ``python benchmarks/train.py [--architectures dilated dilated-match quicksilver] [--steps 10]
[--rounds 3] [--device cpu] [--threads 2]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def step_seconds(model, x, y, opt, steps: int, sync) -> float:
    """Mean seconds of ``steps`` Adam steps of ``model`` on the batch ``(x, y)``."""
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.l1_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> None:
    from qs.device import resolve_device
    from qs.net import ARCHITECTURES, count_parameters

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architectures", nargs="+", default=["dilated", "dilated-match"], choices=list(ARCHITECTURES))
    ap.add_argument("--reference", default="dilated", choices=list(ARCHITECTURES))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=15)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(dict.fromkeys([args.reference, *args.architectures]))
    torch.manual_seed(0)
    p = args.patch
    x = torch.rand(args.batch, 2, p, p, p, device=device)
    y = torch.randn(args.batch, 3, p, p, p, device=device)
    runs = {}
    for name in names:
        model = ARCHITECTURES[name](args.features, args.dropout, p).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step_seconds(model, x, y, opt, args.warmup, sync)
        runs[name] = (model, opt, [])
    for _ in range(args.rounds):
        for name, (model, opt, times) in runs.items():
            times.append(step_seconds(model, x, y, opt, args.steps, sync))
    ref = statistics.median(runs[args.reference][2])
    print(f"device {device}, {args.threads} threads, batch {args.batch} of {p}^3, {args.features} features")
    print(f"{'architecture':<16}{'parameters':>12}{'s/step':>10}{'ratio':>8}")
    for name, (model, _, times) in runs.items():
        med = statistics.median(times)
        print(f"{name:<16}{count_parameters(model):>12,}{med:>10.4f}{med / ref:>8.2f}")


if __name__ == "__main__":
    main()
