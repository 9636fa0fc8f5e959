"""ANTsPy SyN baseline on pairs already on the working grid.

The transforms are ANTs' own files (``warp.nii.gz`` displacement field, and
the identity affine ANTs estimates first): ``ants.apply_transforms(fixed=T,
moving=M, transformlist=[warp, affine])`` reproduces ``warped.nii.gz``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .affine import _ants, apply_transforms, seed_ants, set_ants_threads
from .io import check_same_grid, copy_file, load_image, load_labels, write_text


def run_syn(moving, target, out_dir, *, labels=None, seed: int = 0, threads: int = 1, type_of_transform: str = "SyN") -> dict:
    """Register ``moving`` to ``target`` with ANTs SyN; write the warp, the warped image and labels.

    Writes ``OUT/warp.nii.gz`` and ``OUT/affine.mat`` (ANTs transforms, target
    point -> moving point), ``OUT/warped.nii.gz``, ``OUT/warped_labels.nii.gz``
    when ``labels`` (on the moving grid) are given, and ``OUT/summary.json``
    with the registration time in seconds.
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
    result = ants.registration(fixed=fixed, moving=mov, type_of_transform=type_of_transform)
    seconds = time.perf_counter() - start
    fwd = result["fwdtransforms"]
    warp_src = next(p for p in fwd if p.endswith(".nii.gz"))
    mat_src = next(p for p in fwd if p.endswith(".mat"))
    outputs = {"warp": copy_file(warp_src, out_dir / "warp.nii.gz"), "affine": copy_file(mat_src, out_dir / "affine.mat")}
    chain = [outputs["warp"], outputs["affine"]]
    outputs["warped"] = apply_transforms(target, moving, chain, out_dir / "warped.nii.gz")
    if labels:
        outputs["warped_labels"] = apply_transforms(target, labels, chain, out_dir / "warped_labels.nii.gz", labels=True)
    summary = {"method": "syn", "type_of_transform": type_of_transform, "seconds": seconds, "threads": threads, "seed": seed}
    outputs["summary"] = write_text(json.dumps(summary, indent=2) + "\n", out_dir / "summary.json")
    return outputs

