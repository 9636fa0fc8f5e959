"""ANTsPy SyN baseline on pairs already on the working grid.

The transforms are ANTs' own files (``warp.nii.gz`` displacement field, and
the identity affine ANTs estimates first): ``ants.apply_transforms(fixed=T,
moving=M, transformlist=[warp, affine])`` reproduces ``warped.nii.gz``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .affine import _ants, seed_ants, set_ants_threads
from .io import atomic_path, check_same_grid, load_image, load_labels, write_text


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
    outputs = {"warp": out_dir / "warp.nii.gz", "affine": out_dir / "affine.mat"}
    for src, dst in ((warp_src, outputs["warp"]), (mat_src, outputs["affine"])):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    chain = [str(outputs["warp"]), str(outputs["affine"])]
    warped = ants.apply_transforms(fixed=fixed, moving=mov, transformlist=chain)
    outputs["warped"] = out_dir / "warped.nii.gz"
    with atomic_path(outputs["warped"]) as tmp:
        ants.image_write(warped, str(tmp))
    if labels:
        lab = ants.apply_transforms(fixed=fixed, moving=ants.image_read(str(labels)), transformlist=chain, interpolator="genericLabel")
        outputs["warped_labels"] = out_dir / "warped_labels.nii.gz"
        with atomic_path(outputs["warped_labels"]) as tmp:
            ants.image_write(lab.clone("unsigned int"), str(tmp))
    summary = {"method": "syn", "type_of_transform": type_of_transform, "seconds": seconds, "threads": threads, "seed": seed}
    outputs["summary"] = write_text(json.dumps(summary, indent=2) + "\n", out_dir / "summary.json")
    return outputs

