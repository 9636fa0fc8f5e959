"""Benchmark the LDDMM engine: time per iteration and peak memory at 3, 2 and 1 mm.

One "iteration" is what the optimizer pays per step: the energy and its
gradient for one momentum (RK4 shooting with 10 steps + the adjoint).

Configurations, each measured in a fresh process (peak RSS from
``resource.getrusage`` in that process, so nothing leaks between them):

* ``engine``: :class:`qs.lddmm.Objective` (checkpointed exact adjoint,
  ``torch.compile`` where it works);
* ``naive``: autograd through the whole RK4 trajectory
  (:func:`qs.lddmm.energy_autograd`), skipped at 1 mm where it does not fit;
* ``floor``: the FFT work an iteration cannot avoid -- 2 x 4 x time_steps
  kernel applications (the forward shooting and the adjoint) -- plus the
  image interpolation and its gradient.

Data: the MNI ICBM152 2009a T1 template shipped with nilearn, cropped to
160x192x160 at 1 mm, block-averaged to 2 mm (80x96x80) and resampled to 3 mm
(53x64x53), intensities in [0, 1]; the target is the same image warped by a
smooth random displacement (up to about 4 mm).

Usage: ``python benchmarks/lddmm.py [--sizes 3 2 1] [--iterations 3] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEER = {2.0: (7.2, 1.63), 1.0: (305.0, 4.5)}  # mermaid adjoint: s / iteration, GB (machines.md)


def mni_pair(mm: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Moving = MNI T1 template at ``mm``; target = a smoothly deformed copy."""
    import nibabel as nib
    import nilearn
    from scipy import ndimage

    path = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    img = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)[18:178, 21:213, 0:160]
    img /= img.max()
    if mm == 1.0:
        out = img
    elif mm == 2.0:
        out = img.reshape(80, 2, 96, 2, 80, 2).mean(axis=(1, 3, 5))
    else:
        out = ndimage.zoom(img, 1.0 / mm, order=1)
    out = np.ascontiguousarray(out, dtype=np.float32)
    rng = np.random.default_rng(seed)
    disp = ndimage.gaussian_filter(rng.standard_normal((3, *out.shape)), (0, *(8.0 / mm,) * 3))
    disp *= (4.0 / mm) / np.abs(disp).max()  # voxels: up to 4 mm
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in out.shape], indexing="ij"))
    target = ndimage.map_coordinates(out, grid + disp, order=1, mode="nearest").astype(np.float32)
    return out, target


def _child(kind: str, data: str, mm: float, iterations: int, threads: int, compile_mode):
    import torch

    torch.set_num_threads(threads)
    from qs.lddmm import Objective, energy_autograd
    from qs.lddmm.warp import identity, sample

    I0, I1 = np.load(data + "_0.npy"), np.load(data + "_1.npy")
    h = (mm, mm, mm)
    obj = Objective(I0, I1, h, compile=compile_mode if kind == "engine" else False)
    rng = torch.Generator().manual_seed(0)
    m0 = torch.randn((3, *obj.shape), generator=rng) * 1e-6
    m0 = m0 * (2.0 / obj.velocity(m0).abs().max())  # a momentum that moves ~2 mm

    if kind == "engine":
        def once():
            return obj(m0)[1]
    elif kind == "naive":
        def once():
            x = m0.clone().requires_grad_(True)
            total, _, _ = energy_autograd(obj, x)
            (g,) = torch.autograd.grad(total, x)
            return g
    else:  # floor: the kernel applications and the interpolation an iteration must do
        mp_ = obj.pad(m0)
        n_k = 2 * 4 * obj.shooter.time_steps
        pos0 = identity(obj.shape, obj.spacing)

        def once():
            with torch.no_grad():
                for _ in range(n_k):
                    obj.kernel.apply(mp_)
            u = torch.zeros((3, *obj.shape), requires_grad=True)
            r = sample(obj.I0, pos0 + u, obj.spacing) - obj.I1
            (g,) = torch.autograd.grad((r * r).sum(), u)
            return g

    t = time.perf_counter()
    once()  # warm-up (and torch.compile)
    warm = time.perf_counter() - t
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"kind": kind, "mm": mm, "shape": list(obj.shape), "seconds": float(np.median(times)),
            "seconds_min": float(min(times)), "warmup": warm, "peak_gb": rss / 1e9,
            "compiled": bool(obj.shooter.compiled), "threads": threads}


def run_child(*args):
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_child, args)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[3.0, 2.0, 1.0], help="spacings in mm")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per configuration")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=["engine", "naive", "floor"])
    ap.add_argument("--naive-max-voxels", type=int, default=1_000_000,
                    help="skip naive autograd above this many voxels (1 mm does not fit)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    compile_mode = {"auto": "auto", "on": True, "off": False}[args.compile]

    results = []
    with tempfile.TemporaryDirectory() as td:
        for mm in args.sizes:
            I0, I1 = mni_pair(mm)
            data = os.path.join(td, f"pair{mm}")
            np.save(data + "_0.npy", I0)
            np.save(data + "_1.npy", I1)
            for kind in args.kinds:
                if kind == "naive" and I0.size > args.naive_max_voxels:
                    print(f"{mm:g} mm {I0.shape}: naive autograd skipped (too large)", flush=True)
                    continue
                r = run_child(kind, data, mm, args.iterations, args.threads, compile_mode)
                results.append(r)
                print(f"{mm:g} mm {tuple(r['shape'])} {kind:6s}: {r['seconds']:7.2f} s/it "
                      f"(min {r['seconds_min']:.2f}, warm-up {r['warmup']:.1f} s)  peak {r['peak_gb']:5.2f} GB"
                      + ("  [compiled]" if r["compiled"] else ""), flush=True)

    print("\n| mm | grid | engine s/it | engine GB | naive s/it | naive GB | floor s/it | engine/naive time"
          " | engine/naive mem | engine/floor | peer (mermaid adjoint) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mm in args.sizes:
        by = {r["kind"]: r for r in results if r["mm"] == mm}
        e, n, f = by.get("engine"), by.get("naive"), by.get("floor")
        cell = lambda r, k, fmt: (fmt % r[k]) if r else "-"  # noqa: E731
        ratio = lambda a, b, k: f"{a[k] / b[k]:.2f}" if a and b else "-"  # noqa: E731
        peer = PEER.get(mm)
        grid = "x".join(str(s) for s in (e or n or f)["shape"])
        print(f"| {mm:g} | {grid} | {cell(e, 'seconds', '%.2f')} | {cell(e, 'peak_gb', '%.2f')} | "
              f"{cell(n, 'seconds', '%.2f')} | {cell(n, 'peak_gb', '%.2f')} | {cell(f, 'seconds', '%.2f')} | "
              f"{ratio(e, n, 'seconds')} | {ratio(e, n, 'peak_gb')} | {ratio(e, f, 'seconds')} | "
              f"{'%.1f s / %.2f GB' % peer if peer else '-'} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
