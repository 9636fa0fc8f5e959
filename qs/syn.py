"""ANTsPy SyN baselines on pairs already on the working grid (docs/syn.md).

Two variants (the report's methods):

* ``syn``: SyN at full strength, deformable only (the pairs are affinely
  pre-aligned): ANTsPy ``type_of_transform="SyNOnly"`` with a cross-correlation
  metric of window radius ``radius`` voxels (antsRegistrationSyN.sh's metric for
  same-modality pairs) and ``iterations`` at every level, coarse to fine, the
  finest included (level ``i`` of ``n``: shrink factor ``2^(n-1-i)``, Gaussian
  smoothing ``n-1-i`` voxels, as ANTsPy sets them).
* ``syn-quick``: ANTsPy's defaults (``type_of_transform="SyN"``): an affine
  stage, then SyN with Mattes mutual information and 40x20x0 iterations (none
  at the finest level).
* named settings ``syn-NAME`` (``evaluate.syn_variants`` entries
  ``{name, metric, radius, iterations}``): deformable-only SyN like ``syn``,
  each setting defaulting to ``syn``'s (:func:`variant_specs`).

The transforms are ANTs' own files (``warp.nii.gz`` displacement field, and
the affine ANTs writes first: the identity for ``syn``):
``ants.apply_transforms(fixed=T, moving=M, transformlist=[warp, affine])``
reproduces ``warped.nii.gz``; ``summary.json`` lists that chain under
``transforms``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from .affine import _ants, apply_transforms, seed_ants, set_ants_threads
from .io import QsInputError, check_same_grid, copy_file, load_image, load_labels, write_json
from .settings import default

VARIANTS = ("syn", "syn-quick")  # the built-in variants; named ones match NAME_PATTERN
NAME_PATTERN = re.compile(r"syn-[a-z0-9]+(-[a-z0-9]+)*")
METRICS = ("CC", "mattes")
#: the ``syn`` variant's settings when not given: the schema's defaults of ``evaluate.syn_metric``,
#: ``syn_radius``, ``syn_iterations`` (the workflow passes its config's)
DEFAULT_METRIC, DEFAULT_RADIUS = default("evaluate.syn_metric"), default("evaluate.syn_radius")
DEFAULT_ITERATIONS = tuple(default("evaluate.syn_iterations"))
MATTES_BINS = 32  # ANTsPy's histogram bins of the Mattes metric
QUICK = {"type_of_transform": "SyN"}  # ANTsPy's default registration


def ants_settings(variant: str = "syn", *, metric: str = DEFAULT_METRIC, radius: int = DEFAULT_RADIUS,
                  iterations=DEFAULT_ITERATIONS) -> dict:
    """The ``ants.registration`` keyword arguments of a variant (``metric``, ``radius``, ``iterations``: ``syn`` only).

    ``radius``: the CC window's radius in voxels (window ``2 radius + 1``);
    ``iterations``: per level, coarse to fine, each > 0.
    """
    check_variant_name(variant)
    if variant == "syn-quick":
        return dict(QUICK)
    if metric not in METRICS:
        raise QsInputError(f"SyN metric must be one of {', '.join(METRICS)}, got '{metric}'")
    iterations = tuple(int(i) for i in iterations)
    if not iterations or min(iterations) < 1:
        raise QsInputError(f"SyN iterations must be one or more levels of at least 1, got {list(iterations)}")
    if int(radius) < 1:
        raise QsInputError(f"SyN CC radius must be at least 1 voxel, got {radius}")
    return {"type_of_transform": "SyNOnly", "syn_metric": metric,
            "syn_sampling": int(radius) if metric == "CC" else MATTES_BINS, "reg_iterations": iterations}


def check_variant_name(name: str) -> str:
    """``name`` if it names a SyN variant (``syn``, ``syn-quick`` or ``syn-`` + lower-case words joined by -)."""
    if name not in VARIANTS and not NAME_PATTERN.fullmatch(str(name)):
        raise QsInputError(f"SyN variant must be syn, syn-quick or a name syn-<lower-case letters, digits, dashes>, "
                           f"got '{name}'")
    return name


def variant_specs(variants, *, metric: str = DEFAULT_METRIC, radius: int = DEFAULT_RADIUS,
                  iterations=DEFAULT_ITERATIONS) -> dict[str, dict | None]:
    """Name -> settings (``metric``, ``radius``, ``iterations``; None for ``syn-quick``) of ``evaluate.syn_variants``.

    ``variants``: the config list, names (``syn``, ``syn-quick``) and dicts
    ``{name, metric, radius, iterations}`` whose missing keys take ``syn``'s
    settings (``metric``, ``radius``, ``iterations``). A name given twice is refused.
    """
    out = {}
    for v in variants:
        spec = {"name": v} if isinstance(v, str) else dict(v)
        name = check_variant_name(spec.pop("name", ""))
        if name in out:
            raise QsInputError(f"config: evaluate.syn_variants: '{name}' is given twice")
        if name == "syn-quick":
            if spec:
                raise QsInputError("config: evaluate.syn_variants: syn-quick runs ANTsPy's defaults; it takes no settings")
            out[name] = None
            continue
        if name == "syn" and spec:
            raise QsInputError("config: evaluate.syn_variants: syn's settings are evaluate.syn_metric, syn_radius and "
                               "syn_iterations; name another setting syn-<something>")
        settings = {"metric": metric, "radius": radius, "iterations": list(iterations)} | spec
        ants_settings(name, **settings)  # refuses a bad metric, radius or iteration list
        out[name] = settings
    return out


def describe(settings: dict) -> str:
    """One line stating what ``ants.registration(**settings)`` runs (for summary.json and the report)."""
    if settings == QUICK:
        return ("ANTsPy defaults (type_of_transform SyN): affine (Mattes), then SyN with Mattes 32 bins, "
                "40x20x0 iterations (none at the finest level)")
    if settings.get("type_of_transform") != "SyNOnly":
        return ", ".join(f"{k} {v}" for k, v in settings.items())
    its = settings["reg_iterations"]
    n = len(its)
    metric = settings["syn_metric"]
    what = f"CC radius {settings['syn_sampling']}" if metric == "CC" else f"Mattes {settings['syn_sampling']} bins"
    return (f"ANTsPy SyNOnly (deformable only), {what}, iterations {'x'.join(map(str, its))} "
            f"(shrink {'x'.join(str(2 ** (n - 1 - i)) for i in range(n))}, "
            f"smoothing {'x'.join(str(n - 1 - i) for i in range(n))} voxels), gradient step 0.2")


def syn_registration(moving, target, out_dir, settings: dict, *, labels=None, seed: int = 0, threads: int = 1,
             method: str = "syn") -> dict:
    """Register ``moving`` to ``target`` with ``ants.registration(**settings)``; write the results into ``out_dir``.

    Writes ``warp.nii.gz`` and ``affine.mat`` (ANTs transforms, target point ->
    moving point), ``warped.nii.gz``, ``warped_labels.nii.gz`` when ``labels``
    (on the moving grid) are given, and ``summary.json``: ``method``,
    ``settings`` (the keyword arguments), ``description`` (:func:`describe`),
    ``transforms`` (the chain for ``ants.apply_transforms``, file names in
    ``out_dir``), ``seconds`` (the registration alone), ``threads`` and ``seed``.
    """
    ants = _ants()
    set_ants_threads(threads)
    m_img, t_img = load_image(moving, what="moving image"), load_image(target, what="target image")
    check_same_grid(t_img, m_img, target, moving)
    if labels:
        load_labels(labels, reference=m_img, reference_path=moving)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fixed, mov = ants.image_read(str(target)), ants.image_read(str(moving))
    seed_ants(seed)
    start = time.perf_counter()
    result = ants.registration(fixed=fixed, moving=mov, **settings)
    seconds = time.perf_counter() - start
    fwd = result["fwdtransforms"]
    warp_src = next(p for p in fwd if p.endswith(".nii.gz"))
    mat_src = next(p for p in fwd if p.endswith(".mat"))
    outputs = {"warp": copy_file(warp_src, out_dir / "warp.nii.gz"), "affine": copy_file(mat_src, out_dir / "affine.mat")}
    chain = [outputs["warp"], outputs["affine"]]
    outputs["warped"] = apply_transforms(target, moving, chain, out_dir / "warped.nii.gz")
    if labels:
        outputs["warped_labels"] = apply_transforms(target, labels, chain, out_dir / "warped_labels.nii.gz", labels=True)
    summary = {"method": method, "settings": settings, "description": describe(settings),
               "transforms": [p.name for p in chain], "seconds": seconds, "threads": threads, "seed": seed}
    outputs["summary"] = write_json(summary, out_dir / "summary.json")
    return outputs


def run_syn(moving, target, out_dir, *, labels=None, seed: int = 0, threads: int = 1, variant: str = "syn",
            metric: str = DEFAULT_METRIC, radius: int = DEFAULT_RADIUS, iterations=DEFAULT_ITERATIONS) -> dict:
    """``qs syn``: the ``variant`` (``syn`` or ``syn-quick``, see the module) of ``moving`` to ``target``; see :func:`register`."""
    settings = ants_settings(variant, metric=metric, radius=radius, iterations=iterations)
    return syn_registration(moving, target, out_dir, settings, labels=labels, seed=seed, threads=threads, method=variant)
