"""The report's example pair: its images, warp and uncertainty read onto the target grid for ``example_pair.png``.

Arrays in nibabel's voxel order ``(I, J, K)``; the displacement ``(3, I, J, K)`` in mm along the voxel axes.
"""

from __future__ import annotations

import numpy as np

from ..io import QsInputError, check_same_grid, load_image
from .pair import read_warp


def _example_paths(example: dict) -> dict:
    """The example's paths by key (``target_t1``/``moving_t1`` read as ``target``/``moving``); refuses unknown or missing keys."""
    alias = {"target_t1": "target", "moving_t1": "moving"}
    known = {"target", "moving", "warped", "warp", "uncertainty", "pair"}
    ex = {}
    for k, v in example.items():
        k = alias.get(k, k)
        if k not in known:
            raise QsInputError(f"report: unknown example key '{k}' (known: {', '.join(sorted(known | set(alias)))})")
        if v is not None:
            ex[k] = v
    for need in ("target", "warp"):
        if need not in ex:
            raise QsInputError(f"report: the example pair needs '{need}'")
    if "warped" not in ex and "moving" not in ex:
        raise QsInputError("report: the example pair needs 'warped' or 'moving'")
    return ex


def _warp_moving(target, moving, warp):
    """``moving`` warped onto ``target`` by the ANTs displacement ``warp`` (as ``ants.apply_transforms``)."""
    import ants

    out = ants.apply_transforms(fixed=ants.image_read(str(target)), moving=ants.image_read(str(moving)),
                                transformlist=[str(warp)])
    return out.numpy()


def _uncertainty_volume(path, grid, grid_name):
    """``sqrt`` of ``uncertainty.nii.gz``: :mod:`qs.predict` stores the trace of the covariance of the
    MC-dropout samples' displacement (mm^2), so this is their RMS spread in mm."""
    img = load_image(path, what="uncertainty map")
    check_same_grid(grid, img, grid_name, path)
    return np.sqrt(np.maximum(np.asarray(img.dataobj), 0))


def load_example(example: dict) -> dict:
    """Read the example pair's files (see :func:`qs.report.build.build_report`) into arrays on the target grid.

    Returns ``target``, ``warped``, ``moving`` (or None), ``disp`` ``(3, I, J, K)``
    mm, ``uncertainty`` (RMS spread in mm, or None), ``affine`` and ``pair``. Without a
    ``warped`` image, ``moving`` is warped with ANTs by ``warp``.
    """
    ex = _example_paths(example)
    target_img = load_image(ex["target"], what="target image")

    def on_grid(key, what):
        if key not in ex:
            return None
        img = load_image(ex[key], what=what)
        check_same_grid(target_img, img, ex["target"], ex[key])
        return np.asarray(img.dataobj)

    moving = on_grid("moving", "moving image")
    disp = read_warp(ex["warp"], target_img, ex["target"])
    warped = on_grid("warped", "warped image")
    if warped is None:
        warped = _warp_moving(ex["target"], ex["moving"], ex["warp"])
    unc = _uncertainty_volume(ex["uncertainty"], target_img, ex["target"]) if "uncertainty" in ex else None
    return {"target": np.asarray(target_img.dataobj), "warped": warped, "moving": moving, "disp": disp,
            "uncertainty": unc, "affine": target_img.affine, "pair": str(ex.get("pair", ""))}
