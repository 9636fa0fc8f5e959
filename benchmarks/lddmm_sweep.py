"""Choose the LDDMM energy by target overlap on a run's TRAINING pairs: a sweep of settings.

Reads a finished (or pre-processed) workflow run (``--results``): its
training pairs (``cohort/pairs.tsv``, split ``train``), their pre-processed
T1 images and labels on the working grid, and its settings
(``provenance/config.yaml``: ``lddmm`` and ``evaluate.exclude_labels``).
The reference pairs (split ``test``) are never read: the report scores
them after the choice.

Every ``--setting NAME=JSON`` is a set of keyword arguments of
:func:`qs.lddmm.lddmm_registration` over the run's (``base`` = the run's
own, always first), e.g. ``a02='{"alpha": 0.02, "beta": 0.02}'``,
``w3='{"window": 3}'``, ``long='{"coarse_iterations": 60, "iterations": 20}'``,
``multi='{"scales": [1, 0.5, 0.25]}'``. ``--syn syn-quick syn`` adds ANTs
SyN settings (:data:`qs.syn.SETTINGS`) on the same pairs for comparison.

Each (setting, pair) runs on one CPU thread, ``--jobs`` at once (like the
workflow's jobs); a worker's first LDDMM call compiles (timed apart, not in
the seconds). Per setting: the Klein et al. 2009 target overlap pooled over
the labels (mean and worst pair over the pairs), det J min of phi^-1, the
median seconds per pair. The machines are noisy: compare seconds within
one sweep only.

Usage::

    python benchmarks/lddmm_sweep.py --results results-lpba40 --pairs 4 --jobs 2 \\
        --setting a02='{"alpha": 0.02, "beta": 0.02}' [--syn syn-quick] [--tsv sweep.tsv]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine import lddmm_defaults, run_settings  # noqa: E402  (benchmarks/refine.py, beside this script)
from syn import test_pairs  # noqa: E402

_WARM = {}


def _overlap(warped_labels: np.ndarray, target_labels: np.ndarray, exclude) -> float:
    from qs.evaluate import label_overlaps, total_target_overlap

    w, t = np.array(warped_labels), np.array(target_labels)
    for r in exclude:
        w[w == r], t[t == r] = 0, 0
    return total_target_overlap(label_overlaps(w, t))


def _task(args) -> dict:
    """One (setting, pair) on one thread: its overlap, det J min and seconds."""
    import nibabel as nib
    import torch

    torch.set_num_threads(1)
    from qs.lddmm import jacobian_determinant, lddmm_registration, warp_labels

    name, kw, (pair, moving, target, moving_labels, target_labels), exclude, syn = args
    lab1 = np.asarray(nib.load(str(target_labels)).dataobj, np.int32)
    if syn:
        from qs.syn import ants_settings, syn_registration

        with tempfile.TemporaryDirectory() as tmp:
            out = syn_registration(moving, target, Path(tmp) / pair, ants_settings(name), labels=moving_labels,
                                   threads=1, method=name)
            wl = np.asarray(nib.load(str(out["warped_labels"])).dataobj, np.int32)
            seconds = json.loads(Path(out["summary"]).read_text())["seconds"]
        return {"setting": name, "pair": pair, "target_overlap": _overlap(wl, lab1, exclude), "detj_min": np.nan,
                "seconds": seconds, "compile_s": 0.0}
    I0 = np.asarray(nib.load(str(moving)).dataobj, np.float32)
    I1 = np.asarray(nib.load(str(target)).dataobj, np.float32)
    lab0 = torch.from_numpy(np.asarray(nib.load(str(moving_labels)).dataobj, np.int32))
    h = tuple(float(z) for z in nib.load(str(target)).header.get_zooms()[:3])
    compile_s = 0.0
    key = (I0.shape, kw.get("time_steps"))
    if key not in _WARM:  # this worker's compile cost, apart
        t = time.perf_counter()
        lddmm_registration(I0, I1, h, **{**kw, "iterations": 1, "coarse_iterations": 1})
        _WARM[key] = compile_s = time.perf_counter() - t
    t = time.perf_counter()
    res = lddmm_registration(I0, I1, h, **kw)
    seconds = time.perf_counter() - t
    wl = warp_labels(lab0, res.phiinv.double(), h).numpy()
    return {"setting": name, "pair": pair, "target_overlap": _overlap(wl, lab1, exclude),
            "detj_min": float(jacobian_determinant(res.phiinv.double(), h).min()), "seconds": seconds,
            "compile_s": compile_s, "energy": res.summary["energy"]}


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting: mean and worst-pair overlap, det J min, median seconds; in the order the settings came."""
    g = df.groupby("setting", sort=False)
    return pd.DataFrame({"overlap_mean": g["target_overlap"].mean(), "overlap_min": g["target_overlap"].min(),
                         "detj_min": g["detj_min"].min(), "median_s": g["seconds"].median(),
                         "pairs": g["pair"].count()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--pairs", type=int, default=4, help="the first N training pairs (0: all)")
    p.add_argument("--setting", nargs="*", default=[], metavar="NAME=JSON", help="LDDMM settings over the run's")
    p.add_argument("--syn", nargs="*", default=[], metavar="NAME", help="ANTs SyN settings on the same pairs")
    p.add_argument("--no-base", action="store_true", help="leave out the run's own settings")
    p.add_argument("--jobs", type=int, default=2, help="(setting, pair) runs at once, one thread each")
    p.add_argument("--tsv", type=Path, help="also write the per-pair rows to this TSV")
    args = p.parse_args(argv)

    cfg = run_settings(args.results)
    base = lddmm_defaults(cfg)
    exclude = [int(r) for r in cfg.get("evaluate", {}).get("exclude_labels", [])]
    settings = {} if args.no_base else {"base": base}
    for spec in args.setting:
        name, _, text = spec.partition("=")
        settings[name] = {**base, **json.loads(text)}
    pairs = test_pairs(args.results, split="train")
    pairs = pairs[: args.pairs] if args.pairs else pairs
    tasks = [(n, {}, pr, exclude, True) for n in args.syn for pr in pairs]
    tasks += [(n, kw, pr, exclude, False) for n, kw in settings.items() for pr in pairs]
    print(f"{len(pairs)} training pairs, {len(settings)} LDDMM settings, {len(args.syn)} SyN; {args.jobs} jobs of "
          f"one thread; labels left out: {exclude or 'none'}", flush=True)
    rows = []
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=None) as pool:
        for row in pool.imap_unordered(_task, tasks):
            rows.append(row)
            print(f"{row['setting']:14s} {row['pair']:22s} overlap {row['target_overlap']:.4f}  det J min "
                  f"{row['detj_min']:.2f}  {row['seconds']:6.1f} s", flush=True)
    df = pd.DataFrame(rows)
    order = {n: i for i, n in enumerate([*args.syn, *settings])}
    df = df.sort_values(["setting", "pair"], key=lambda s: s.map(order) if s.name == "setting" else s)
    if args.tsv:
        df.to_csv(args.tsv, sep="\t", index=False)
    table = summarise(df)
    ref = table.loc["base", "overlap_mean"] if "base" in table.index else np.nan
    table["vs_base"] = table["overlap_mean"] - ref
    print(table.to_string(float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
