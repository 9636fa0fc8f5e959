"""Benchmark the learned methods against ANTs SyN and LDDMM on a run's reference pairs: overlap and time per pair.

Reads a finished workflow run (``--results``, default ``results``): its test
pairs (``cohort/pairs.tsv``), the pre-processed T1 images and labels, its
LDDMM reference warps (``lddmm/{pair}/warp.nii.gz``), its trained models
(``models/prediction``, ``models/correction``) and its settings
(``provenance/config.yaml``). Then, in this one process, with ``--threads``
CPU threads for every method (default 1: what one workflow job of LDDMM or
SyN gets), on every test pair (or the first ``--pairs``):

* ``syn-quick`` (ANTsPy's default SyN, the report's), the reference of the
  ratios; ``--syn`` adds ``syn`` (full strength, ~10 min per pair);
* ``lddmm``: the run's LDDMM settings (coarse-to-fine as configured), and
  each ``--lddmm NAME=JSON`` variant (keyword arguments of
  :func:`qs.lddmm.lddmm_registration` over the run's, e.g.
  ``fine40='{"iterations": 40, "coarse_iterations": 0, "time_steps": 5}'``);
* ``predict`` (the run's stride and mirror images), ``predict+correct`` (its
  correction rounds), and ``predict+refine C+F`` for each ``--refine C:F``
  (C evaluations on the grid twice as coarse, then F on the working grid,
  started from that same prediction, or with ``--start-mirror-axes`` from a
  prediction with other mirror passes; its seconds = the prediction's + the
  refinement's).

Per method and pair: the Klein et al. 2009 target overlap pooled over the
labels, the median deformation error against the run's LDDMM over the
target's brain (labels > 0) divided by affine's (the report's ``p50 /
affine``), det J min, and the seconds of the registration (tensors in
memory; no file I/O, no model loading). Compilation: the first LDDMM call
of the process (1 + 1 evaluations, both grids) is timed apart as
``compile``; with an empty ``TORCHINDUCTOR_CACHE_DIR`` it is the cold cost a
fresh machine pays once per job, with the workflow's warm cache the cost of
every later job. The table's ratios are per pair, then the median; the
machines are noisy: read the ratios, not the seconds.

Usage::

    python benchmarks/refine.py --results results [--pairs 3] [--refine 0:5 10:10 10:20] [--threads 1] [--syn]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def run_settings(results: Path) -> dict:
    """The run's config (``provenance/config.yaml``)."""
    import yaml

    path = results / "provenance" / "config.yaml"
    if not path.is_file():
        sys.exit(f"{path}: missing (a finished run of the workflow is needed)")
    return yaml.safe_load(path.read_text())


def lddmm_defaults(cfg: dict) -> dict:
    """The run's LDDMM settings as keyword arguments of :func:`qs.lddmm.lddmm_registration`."""
    L = cfg["lddmm"]
    return dict(alpha=L["alpha"], beta=L["beta"], gamma=L["gamma"], sigma=L["sigma"], time_steps=L["time_steps"],
                iterations=L["iterations"], coarse_iterations=L["coarse_iterations"], similarity=L["similarity"],
                window=L["window"], method=L["optimizer"], scales=tuple(L.get("kernel_scales", [1.0])),
                progress=False)


def reference_pairs(results: Path, limit: int, split: str = "test") -> list[dict]:
    """The run's ``split`` pairs (:func:`syn.test_pairs`: images and labels) with their LDDMM warp; the first ``limit``."""
    from syn import test_pairs  # benchmarks/syn.py, beside this script

    out = []
    for pair, moving, target, moving_labels, target_labels in test_pairs(results, split):
        lddmm = results / "lddmm" / pair / "warp.nii.gz"
        if not lddmm.is_file():
            sys.exit(f"{lddmm}: missing (run the workflow first)")
        out.append({"pair": pair, "moving": moving, "target": target, "moving_labels": moving_labels,
                    "target_labels": target_labels, "lddmm": lddmm})
    return out[:limit] if limit else out


def _record(rows, ctx, method, seconds, u=None, warped_labels=None):
    """Append (and print) the row of one method on the pair ``ctx``: overlap, seconds, error vs LDDMM, det J."""
    from qs.evaluate import displacement_error_mm, label_overlaps, total_target_overlap
    from qs.lddmm import jacobian_determinant, warp_labels

    if warped_labels is None:
        warped_labels = warp_labels(ctx["lab0"], u.double(), ctx["h"]).numpy()
    row = {"pair": ctx["pair"], "method": method, "seconds": seconds,
           "target_overlap": total_target_overlap(label_overlaps(warped_labels, ctx["lab1"]))}
    text = ""
    if u is not None:
        err = displacement_error_mm(u.numpy().astype(np.float64), ctx["ref"], ctx["brain"])
        row["p50_vs_affine"] = float(np.median(err)) / ctx["affine_p50"]
        row["detj_min"] = float(jacobian_determinant(u.double(), ctx["h"]).min())
        text = f"  p50/affine {row['p50_vs_affine']:.3f}  det J min {row['detj_min']:.2f}"
    rows.append(row)
    print(f"{ctx['pair']:22s} {method:24s} overlap {row['target_overlap']:.4f}  {seconds:7.1f} s{text}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--pairs", type=int, default=0, help="only the first N pairs (0: all)")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="the pairs: the reference pairs (test) or, to choose settings, the training pairs (the "
                        "networks saw them: their prediction is optimistic, compare methods, not absolute numbers)")
    p.add_argument("--refine", nargs="*", default=["0:5", "10:10", "10:20"], metavar="C:F",
                   help="predict+refine settings: C coarse and F working-grid evaluations")
    p.add_argument("--lddmm", nargs="*", default=[], metavar="NAME=JSON", help="extra LDDMM variants")
    p.add_argument("--syn", action="store_true", help="also SyN at full strength (~10 min per pair)")
    p.add_argument("--start-mirror-axes", type=int, nargs="*", choices=[0, 1, 2], metavar="AXIS",
                   help="the refinements start from a prediction with these mirror axes (none: a single pass) "
                        "instead of the run's predict.mirror_axes; that prediction is a row of its own")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tsv", type=Path, help="also write the per-pair rows to this TSV")
    args = p.parse_args(argv)

    import nibabel as nib
    import torch

    from qs.evaluate import displacement_error_mm
    from qs.fields import kernel_settings
    from qs.lddmm import lddmm_registration
    from qs.predict.files import load_models
    from qs.predict.refine import Refinement, refine_momentum
    from qs.predict.registration import predict_registration
    from qs.syn import ants_settings, syn_registration
    from qs.transforms import read_ants_displacement

    torch.set_num_threads(args.threads)
    cfg = run_settings(args.results)
    L, P = cfg["lddmm"], cfg["predict"]
    lddmm_kw = lddmm_defaults(cfg)
    variants = {"lddmm": {}}
    for spec in args.lddmm:
        name, _, text = spec.partition("=")
        variants[f"lddmm {name}"] = json.loads(text)
    refinements = []
    for spec in args.refine:
        c, _, f = spec.partition(":")
        refinements.append(Refinement(int(f), int(c), L["similarity"], L["window"]))
    models = args.results / "models"
    (model, meta), corr = load_models(models / "prediction" / "model.safetensors",
                                      models / "correction" / "model.safetensors"
                                      if (models / "correction" / "model.safetensors").is_file() else None,
                                      device="cpu")
    predict_kw = dict(stride=P["stride"] or None, mirror_axes=tuple(P["mirror_axes"]), batch_size=P["batch_size"],
                      device="cpu", progress=False)
    pairs = reference_pairs(args.results, args.pairs, args.split)
    syn_names = ["syn-quick", *(["syn"] if args.syn else [])]
    print(f"{len(pairs)} {args.split} pairs; {args.threads} thread(s); LDDMM {L['coarse_iterations']} + {L['iterations']} "
          f"evaluations, {L['time_steps']} RK4 steps", flush=True)

    rows = []
    compiled = False
    with tempfile.TemporaryDirectory() as tmp:
        for pr in pairs:
            I0 = np.asarray(nib.load(str(pr["moving"])).dataobj, np.float32)
            I1 = np.asarray(nib.load(str(pr["target"])).dataobj, np.float32)
            lab0 = torch.from_numpy(np.asarray(nib.load(str(pr["moving_labels"])).dataobj, np.int32))
            lab1 = np.asarray(nib.load(str(pr["target_labels"])).dataobj, np.int32)
            h = tuple(float(z) for z in nib.load(str(pr["target"])).header.get_zooms()[:3])
            ref, _ = read_ants_displacement(pr["lddmm"])
            brain = lab1 > 0
            affine_p50 = float(np.median(displacement_error_mm(np.zeros_like(ref), ref, brain)))

            ctx = {"pair": pr["pair"], "lab0": lab0, "lab1": lab1, "h": h, "ref": ref, "brain": brain,
                   "affine_p50": affine_p50}
            record = functools.partial(_record, rows, ctx)
            if not compiled:  # the process's compile cost, apart (both grids of a coarse-to-fine run)
                t = time.perf_counter()
                lddmm_registration(I0, I1, h, **{**lddmm_kw, "iterations": 1, "coarse_iterations": 1})
                rows.append({"pair": pr["pair"], "method": "compile", "seconds": time.perf_counter() - t})
                print(f"compile + 1 + 1 evaluations: {rows[-1]['seconds']:.1f} s", flush=True)
                compiled = True
            for name in syn_names:
                out = syn_registration(pr["moving"], pr["target"], Path(tmp) / name / pr["pair"], ants_settings(name),
                                       labels=pr["moving_labels"], threads=args.threads, method=name)
                wl = np.asarray(nib.load(str(out["warped_labels"])).dataobj, np.int32)
                record(name, json.loads(out["summary"].read_text())["seconds"], warped_labels=wl)
            for name, over in variants.items():
                t = time.perf_counter()
                res = lddmm_registration(I0, I1, h, **{**lddmm_kw, **over})
                record(name, time.perf_counter() - t, res.phiinv)
            plain = predict_registration(model, meta, I0, I1, spacing=h, **predict_kw)
            record("predict", plain.summary["seconds"], plain.phiinv)
            if corr is not None:
                res = predict_registration(model, meta, I0, I1, spacing=h, correction=corr,
                                           corrections=P["corrections"],
                                           correction_stride=P["correction_stride"] or predict_kw["stride"],
                                           **predict_kw)
                record("predict+correct", res.summary["seconds"], res.phiinv)
            start, tag = plain, ""
            if args.start_mirror_axes is not None:
                start = predict_registration(model, meta, I0, I1, spacing=h,
                                             **{**predict_kw, "mirror_axes": tuple(args.start_mirror_axes)})
                tag = f" (mirrors {''.join(map(str, args.start_mirror_axes)) or 'none'})"
                record(f"predict{tag}", start.summary["seconds"], start.phiinv)
            for r in refinements:
                t = time.perf_counter()
                res = refine_momentum(start.m0, I0, I1, meta, h, r, device="cpu")
                record(f"predict{tag}+refine {r.coarse_iterations}+{r.iterations}",
                       start.summary["seconds"] + time.perf_counter() - t, res.phiinv)
    df = pd.DataFrame(rows)
    if args.tsv:
        df.to_csv(args.tsv, sep="\t", index=False, float_format="%.4f")
    df = df[df["method"] != "compile"]
    wide = {c: df.pivot(index="pair", columns="method", values=c) for c in ("seconds", "target_overlap")}
    quick, lddmm = wide["seconds"]["syn-quick"], wide["seconds"]["lddmm"]
    print(f"\nmethod                   overlap  min(d syn-quick)  >= syn-quick  median s  s/syn-quick  s/lddmm  "
          f"p50/affine  det J > 0   (kernel {kernel_settings(meta)})")
    for m in dict.fromkeys(df["method"]):
        ov, s = wide["target_overlap"][m], wide["seconds"][m]
        d = ov - wide["target_overlap"]["syn-quick"]
        g = df[df["method"] == m]
        err = f"{g['p50_vs_affine'].median():10.3f}" if g.get("p50_vs_affine") is not None and g["p50_vs_affine"].notna().any() else f"{'':>10s}"
        pos = f"{(g['detj_min'] > 0).sum()}/{len(g)}" if "detj_min" in g and g["detj_min"].notna().any() else ""
        print(f"{m:24s} {ov.mean():7.4f} {d.min():+17.4f} {int((d >= 0).sum()):>6d}/{len(d):<5d} {s.median():8.1f} "
              f"{(s / quick).median():12.2f} {(s / lddmm).median():8.2f} {err}  {pos:>8s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
