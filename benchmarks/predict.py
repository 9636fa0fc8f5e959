"""Benchmark prediction against optimization: time per pair, same machine, same pair, same process.

Reads a finished workflow run (``--results``, default ``results``): its
config (``provenance/config.yaml``), its trained networks
(``models/{prediction,correction}/model.safetensors``) and one test pair's
pre-processed images (the first test pair of ``cohort/pairs.tsv`` unless
``--pair`` names another). Then, in this one process and on ``--device``,
times each method on that pair end to end as the workflow runs it (with the
run's ``predict.stride``, ``predict.mirror_axes`` (not for predict-mc), ``predict.corrections`` and
``predict.correction_stride``: read the images, register, write the outputs to a
temporary folder):

* ``predict``: the prediction network, shooting, outputs;
* ``predict-correct``: plus the correction network (``--correct``);
* ``predict-mc``: MC dropout with ``--samples`` samples (paper: 50);
* ``register``, ``register-correct``: the ``register`` block's job (``qs register-pair``) for the atlas
  and the pair's target subject: prediction (and correction) on the working grid, then both directions
  carried into the subject's own grid and the atlas' (``--inverse``), what a registered subject costs;
* ``lddmm``: LDDMM optimization with the run's settings (the reference);
* ``syn``: ANTsPy SyN (CPU only).

A warm-up prediction runs first and is not timed (imports, first-call
allocations). Each method runs ``--repeats`` times; the median is reported,
with the ratios ``lddmm / method`` and ``syn / method``, and the cost of a registered subject
against what a predicted pair cost before the ``register`` block (LDDMM + prediction + correction). The machines are
shared and noisy: read the ratios, not the seconds.

Usage: ``python benchmarks/predict.py [--results results] [--pair P] [--samples 50] [--repeats 1]
[--device auto] [--threads 2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml


def pair_files(results: Path, pair: str | None) -> tuple[str, Path, Path, Path | None]:
    """(pair, moving image, target image, moving labels or None) of a test pair of the run."""
    pairs = pd.read_csv(results / "cohort" / "pairs.tsv", sep="\t", keep_default_na=False)
    test = pairs[pairs["split"] == "test"]
    if pair is None:
        if test.empty:
            sys.exit(f"{results}/cohort/pairs.tsv has no test pair")
        pair = test["pair"].iloc[0]
    row = pairs[pairs["pair"] == pair]
    if row.empty:
        sys.exit(f"{results}/cohort/pairs.tsv has no pair {pair!r}")
    row = row.iloc[0]

    def image(subject, kind):
        if subject == "atlas":
            return results / "atlas" / f"atlas_{kind}.nii.gz"
        return results / "preprocessed" / subject / f"{subject}_{kind}.nii.gz"

    labels = image(row["moving"], "labels")
    return pair, image(row["moving"], "T1w"), image(row["target"], "T1w"), labels if labels.exists() else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--pair", default=None)
    p.add_argument("--samples", type=int, default=50, help="MC-dropout samples (paper: 50)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-syn", action="store_true", help="skip the SyN baseline")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from qs.lddmm_run import run_lddmm
    from qs.predict.files import run_predict
    from qs.registrations import register_pair
    from qs.syn import run_syn

    res = args.results
    config = yaml.safe_load((res / "provenance" / "config.yaml").read_text())
    lcfg = config["lddmm"]
    kernel = {k: lcfg[k] for k in ("alpha", "beta", "gamma", "sigma", "time_steps")}
    model = res / "models" / "prediction" / "model.safetensors"
    correction = res / "models" / "correction" / "model.safetensors"
    pair, moving, target, labels = pair_files(res, args.pair)
    for f in (model, moving, target):
        if not f.exists():
            sys.exit(f"{f}: missing (run the workflow first)")

    stride = config.get("predict", {}).get("stride") or None  # the run's prediction stride (0: the models')
    corrections = int(config.get("predict", {}).get("corrections", 1))
    correction_stride = config.get("predict", {}).get("correction_stride") or None
    mirror_axes = tuple(config.get("predict", {}).get("mirror_axes", ()))

    def predict(out, **kw):
        kw.setdefault("mirror_axes", mirror_axes)
        return run_predict(model, moving, target, out, labels=labels, device=args.device, progress=False,
                           seed=config["seed"], stride=stride, **kw)

    subject = pd.read_csv(res / "cohort" / "pairs.tsv", sep="\t").set_index("pair").loc[pair, "target"]
    raw = pd.read_csv(res / "cohort" / "subjects.tsv", sep="\t", keep_default_na=False).set_index("subject")
    atlas_labels = res / "atlas" / "atlas_labels.nii.gz"
    own = lambda p: None if not p else (Path(p) if Path(p).is_absolute() else res.parent / p)

    def register(out, **kw):  # the atlas to the target subject, as the register block's job
        return register_pair(model, res / "atlas" / "atlas_T1w.nii.gz", target, res / "atlas" / "atlas_T1w.nii.gz",
                             own(raw.loc[subject, "t1"]), out,
                             target_affine=res / "preprocessed" / subject / f"{subject}_affine.mat",
                             moving_labels=atlas_labels if atlas_labels.exists() else None,
                             target_labels=own(raw.loc[subject, "labels"]), inverse=True, stride=stride,
                             mirror_axes=mirror_axes, device=args.device, seed=config["seed"], **kw)

    methods = {
        "register": lambda out: register(out),
        "register-correct": ((lambda out: register(out, correction_model=correction, corrections=corrections,
                                                   correction_stride=correction_stride))
                             if correction.exists() else None),
        "predict": lambda out: predict(out),
        "predict-correct": ((lambda out: predict(out, correction_model=correction, corrections=corrections,
                                                 correction_stride=correction_stride))
                            if correction.exists() else None),
        "predict-mc": lambda out: predict(out, samples=args.samples, mirror_axes=()),  # as the workflow: no mirrors
        "lddmm": lambda out: run_lddmm(moving, target, out, labels=labels, iterations=lcfg["iterations"],
                                       optimizer=lcfg.get("optimizer", "lbfgs"),
                                       similarity=lcfg.get("similarity", "ssd"), window=lcfg.get("window", 5),
                                       coarse_iterations=lcfg.get("coarse_iterations", 0), device=args.device,
                                       seed=config["seed"], progress=False, **kernel),
        "syn": None if args.no_syn else (lambda out: run_syn(moving, target, out, labels=labels,
                                                             seed=config["seed"], threads=args.threads)),
    }
    print(f"pair {pair} ({moving.name} -> {target.name}), grid spacing {config['grid']['spacing']} mm, "
          f"device {args.device}, {args.threads} threads, LDDMM {lcfg['iterations']} iterations "
          f"({lcfg.get('optimizer', 'lbfgs')}, {lcfg.get('similarity', 'ssd')}), MC {args.samples} samples", flush=True)
    seconds: dict[str, float] = {}
    device = {}
    with tempfile.TemporaryDirectory(prefix="qs-bench-predict-") as tmp:
        predict(Path(tmp) / "warmup")  # imports and first-call allocations, not timed
        for name, fn in methods.items():
            if fn is None:
                continue
            runs = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                summary = fn(Path(tmp) / f"{name}-{r}")
                runs.append(time.perf_counter() - t0)
            seconds[name] = statistics.median(runs)
            device[name] = summary.get("device", "cpu")
            print(f"  {name:16s} {seconds[name]:8.2f} s  ({device[name]})", flush=True)

    print("\nmethod            seconds  lddmm/method  syn/method")
    for name, s in seconds.items():
        lddmm = f"{seconds['lddmm'] / s:12.1f}" if "lddmm" in seconds else f"{'-':>12s}"
        syn = f"{seconds['syn'] / s:10.1f}" if "syn" in seconds else f"{'-':>10s}"
        print(f"{name:16s} {s:8.2f}  {lddmm}  {syn}")
    if {"lddmm", "predict-correct", "register-correct"} <= seconds.keys():
        before = seconds["lddmm"] + seconds["predict-correct"]
        print(f"\na registered subject (predict+correct): {seconds['register-correct']:.1f} s; a predicted pair "
              f"before the register block (LDDMM + predict-correct): {before:.1f} s, "
              f"{before / seconds['register-correct']:.1f}x as much")
    return 0


if __name__ == "__main__":
    sys.exit(main())
