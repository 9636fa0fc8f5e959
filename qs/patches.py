"""Patches: the unit the Quicksilver network sees (15^3 voxels, stride 14).

Pure functions on arrays, plus the on-disk patch format used for training.

Conventions (see :mod:`qs`): volumes are ``(C, I, J, K)`` (numpy arrays or
torch tensors; every function returns the type it was given), patch starts
are an integer array ``(P, 3)`` of voxel indices ``(i, j, k)`` of each
patch's first voxel, and patch stacks are ``(P, C, p, p, p)``.

On-disk format of one pair's training patches (:func:`write_pair_patches`):

* ``NAME.npy``: float32 array ``(P, 5, p, p, p)``, channels
  ``moving, target, m0_i, m0_j, m0_k`` (the momentum components along the
  voxel axes, in the units of the LDDMM momentum) or, for patches of the
  velocity (``field: velocity``, :mod:`qs.fields`), ``moving, target, v0_i,
  v0_j, v0_k`` (mm per unit time). Plain ``.npy`` so that it
  can be memory-mapped (:class:`PatchDataset`); a training set larger than
  memory is read patch by patch through the page cache.
* ``NAME.json``: sidecar with patch size, stride, threshold, the grid shape,
  the starts of the kept patches, the ``field`` (``momentum`` when absent),
  and the sums needed for the output scale
  (``abs_sum`` of the field over all kept voxels and components,
  ``n_values``), so training does not need a pass over the data to find it,
  and ``sha256``, the hash of the patch array's data (row by row, C order):
  a training checkpoint records its sidecars' hashes, so it is continued only
  on the same data.

Intensity convention: the images are expected already normalised by the
pre-processing (per image, intensities in ``[0, 1]``); patches are stored as
given, unscaled, and the sidecar records their minimum and maximum.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .fields import FIELD_CHANNELS, check_field, field_of, to_field
from .io import (QsInputError, atomic_path, check_same_grid, load_image, load_momentum, spacing,
                 write_json)

PATCH_FORMAT = "qs-patches-1"
CHANNELS = ("moving", "target", *FIELD_CHANNELS["momentum"])


def _axis_starts(n: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, n - patch + 1, stride))
    if starts[-1] != n - patch:
        starts.append(n - patch)  # last patch flush with the border
    return starts


def patch_starts(shape, patch: int = 15, stride: int = 14) -> np.ndarray:
    """Starts ``(P, 3)`` of a sliding window of ``patch^3`` covering ``shape``.

    Along each axis the starts are ``0, stride, 2 stride, ...`` and, if that
    does not reach the border, one more patch flush with it (start
    ``n - patch``), so every voxel is covered. Order: C order over
    ``(i, j, k)``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"patch_starts: shape must have 3 axes, got {shape}")
    if patch < 1 or stride < 1:
        raise ValueError(f"patch_starts: patch ({patch}) and stride ({stride}) must be positive")
    if stride > patch:
        raise ValueError(f"patch_starts: stride {stride} > patch {patch} would leave voxels uncovered")
    if min(shape) < patch:
        raise ValueError(f"patch_starts: grid {shape} is smaller than the patch size {patch} along an axis; pad the grid")
    axes = [_axis_starts(n, patch, stride) for n in shape]
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1).astype(np.int64)


def _check_starts(starts, shape, patch: int, where: str) -> np.ndarray:
    starts = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
    if len(starts) and ((starts < 0).any() or (starts + patch > np.asarray(shape)[None, :]).any()):
        raise ValueError(f"{where}: a patch of size {patch} at the given starts leaves the grid {tuple(shape)}")
    return starts


def extract_patches(volumes, starts, patch: int = 15):
    """Cut ``volumes`` ``(C, I, J, K)`` into patches ``(P, C, p, p, p)`` at ``starts``."""
    if volumes.ndim != 4:
        raise ValueError(f"extract_patches: volumes must be (C, I, J, K), got shape {tuple(volumes.shape)}")
    starts = _check_starts(starts, volumes.shape[1:], patch, "extract_patches")
    pieces = [volumes[:, i : i + patch, j : j + patch, k : k + patch] for i, j, k in starts]
    if isinstance(volumes, torch.Tensor):
        if not pieces:
            return volumes.new_zeros((0, volumes.shape[0], patch, patch, patch))
        return torch.stack(pieces)
    if not pieces:
        return np.zeros((0, volumes.shape[0], patch, patch, patch), dtype=volumes.dtype)
    return np.stack(pieces)


def foreground_starts(moving, target, starts, patch: int = 15, threshold: float = 0.0) -> np.ndarray:
    """Keep the starts whose patch has foreground in the moving OR the target image.

    A patch is background in an image when all its voxels are ``<= threshold``;
    a patch is dropped only when it is background in both images (threshold
    0 is the original code's rule: both patch sums zero for non-negative
    images). ``moving`` and ``target`` are ``(I, J, K)``.
    """
    if moving.shape != target.shape or moving.ndim != 3:
        raise ValueError(
            f"foreground_starts: moving {tuple(moving.shape)} and target {tuple(target.shape)} must be equal 3D shapes"
        )
    starts = _check_starts(starts, moving.shape, patch, "foreground_starts")
    if isinstance(moving, torch.Tensor):
        moving = moving.detach().cpu().numpy()
    if isinstance(target, torch.Tensor):
        target = target.detach().cpu().numpy()
    fg = (np.asarray(moving) > threshold) | (np.asarray(target) > threshold)
    # A patch has foreground iff the box sum of fg over it is positive:
    # summed-area table, O(volume) instead of O(P p^3).
    sat = np.zeros(tuple(n + 1 for n in fg.shape), dtype=np.int64)
    sat[1:, 1:, 1:] = fg.cumsum(0).cumsum(1).cumsum(2)
    i0, j0, k0 = starts[:, 0], starts[:, 1], starts[:, 2]
    i1, j1, k1 = i0 + patch, j0 + patch, k0 + patch
    box = (
        sat[i1, j1, k1] - sat[i0, j1, k1] - sat[i1, j0, k1] - sat[i1, j1, k0]
        + sat[i0, j0, k1] + sat[i0, j1, k0] + sat[i1, j0, k0] - sat[i0, j0, k0]
    )
    return starts[box > 0]


def reassemble(patches, starts, shape):
    """Put patches ``(P, C, p, p, p)`` back on a grid ``shape`` (3 axes), averaging overlaps.

    Returns ``(C, I, J, K)`` of the input's type and dtype. Voxels covered by
    no patch are 0. Sums are accumulated in float64, so patches cut from a
    single field give that field back exactly.
    """
    if patches.ndim != 5 or len({*patches.shape[2:]}) != 1:
        raise ValueError(f"reassemble: patches must be (P, C, p, p, p), got shape {tuple(patches.shape)}")
    shape = tuple(int(n) for n in shape)
    p = int(patches.shape[2])
    starts = _check_starts(starts, shape, p, "reassemble")
    if len(starts) != patches.shape[0]:
        raise ValueError(f"reassemble: {patches.shape[0]} patches but {len(starts)} starts")
    is_torch = isinstance(patches, torch.Tensor)
    if is_torch:
        src = patches.detach().to(torch.float64)
        acc = torch.zeros((patches.shape[1], *shape), dtype=torch.float64, device=patches.device)
        cnt = torch.zeros(shape, dtype=torch.float64, device=patches.device)
    else:
        src = np.asarray(patches, dtype=np.float64)
        acc = np.zeros((patches.shape[1], *shape), dtype=np.float64)
        cnt = np.zeros(shape, dtype=np.float64)
    for n, (i, j, k) in enumerate(starts):
        acc[:, i : i + p, j : j + p, k : k + p] += src[n]
        cnt[i : i + p, j : j + p, k : k + p] += 1
    if is_torch:
        out = torch.where(cnt > 0, acc / cnt.clamp_min(1), torch.zeros_like(acc))
        return out.to(patches.dtype)
    out = np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0)
    return out.astype(patches.dtype, copy=False)


def _as_numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise QsInputError(f"write_pair_patches: {what} contains NaN/Inf values")
    return x


def sidecar_path(patch_file) -> Path:
    """The JSON sidecar of a patch file: ``NAME.npy`` -> ``NAME.json``."""
    return Path(patch_file).with_suffix(".json")


def write_pair_patches(moving, target, momentum, out_path, patch: int = 15, stride: int = 14,
                       threshold: float = 0.0, *, pair: str | None = None, field: str = "momentum") -> tuple[Path, Path]:
    """Write one pair's training patches (``out_path``, ``.npy``) and its JSON sidecar.

    ``moving`` and ``target`` are ``(I, J, K)`` images on the working grid
    (normalised by the pre-processing), ``momentum`` is ``(3, I, J, K)`` (the
    LDDMM initial momentum, or the residual momentum for the correction
    network; with ``field="velocity"`` the velocity of it,
    :func:`qs.fields.to_field`, which the caller computes). Patches
    background in both images are dropped (:func:`foreground_starts`). The
    array is filled through a memory map, so only the volumes and one patch
    are in memory. Returns both paths.
    """
    out_path = Path(out_path)
    check_field(field)
    if out_path.suffix != ".npy":
        raise ValueError(f"write_pair_patches: out_path must end in .npy, got {out_path}")
    moving = _as_numpy(moving, "moving image")
    target = _as_numpy(target, "target image")
    momentum = _as_numpy(momentum, "momentum")
    if moving.ndim != 3 or target.shape != moving.shape or momentum.shape != (3, *moving.shape):
        raise QsInputError(
            f"write_pair_patches ({out_path.name}): shapes must be moving (I,J,K) = target and momentum (3,I,J,K); "
            f"got {moving.shape}, {target.shape}, {momentum.shape}"
        )
    all_starts = patch_starts(moving.shape, patch, stride)
    starts = foreground_starts(moving, target, all_starts, patch, threshold)
    volumes = np.concatenate([moving[None], target[None], momentum], axis=0)
    abs_sum = [0.0, 0.0, 0.0]
    digest = hashlib.sha256()
    with atomic_path(out_path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(len(starts), len(CHANNELS), patch, patch, patch))
        for n, (i, j, k) in enumerate(starts):
            piece = volumes[:, i : i + patch, j : j + patch, k : k + patch]
            arr[n] = piece
            digest.update(arr[n].tobytes())
            for c in range(3):
                abs_sum[c] += float(np.abs(piece[2 + c], dtype=np.float64).sum())
        arr.flush()
        del arr
    info = {
        "format": PATCH_FORMAT,
        "pair": pair if pair is not None else out_path.name[: -len(".npy")],
        "channels": ["moving", "target", *FIELD_CHANNELS[field]],
        "field": field,
        "patch": int(patch),
        "stride": int(stride),
        "threshold": float(threshold),
        "shape": [int(n) for n in moving.shape],
        "n_patches": int(len(starts)),
        "n_patches_total": int(len(all_starts)),
        "starts": starts.tolist(),
        "abs_sum": abs_sum,
        "n_values": int(len(starts)) * patch**3,
        "image_min": float(min(moving.min(), target.min())),
        "image_max": float(max(moving.max(), target.max())),
        "sha256": digest.hexdigest(),
    }
    side = write_json(info, sidecar_path(out_path), indent=1)
    return out_path, side


def pair_patches_from_files(moving_path, target_path, momentum_path, out_path, *, patch: int = 15,
                            stride: int = 14, threshold: float = 0.0, pair: str | None = None,
                            field: str = "momentum", kernel: dict | None = None) -> tuple[Path, Path]:
    """``qs patches``: :func:`write_pair_patches` of NIfTI files on one grid (``momentum_path``: (I, J, K, 3)).

    ``field="velocity"`` needs ``kernel`` (alpha, beta, gamma, time_steps: the LDDMM's) to turn the
    momentum into its velocity (:func:`qs.fields.to_field`, mm per unit time).
    """
    moving = load_image(moving_path, what="moving image")
    target = load_image(target_path, what="target image")
    check_same_grid(moving, target, moving_path, target_path)
    m0 = load_momentum(momentum_path, moving, moving_path)
    if field != "momentum":
        m0 = to_field(torch.from_numpy(np.asarray(m0, np.float32)), field, spacing(moving), kernel).numpy()
    return write_pair_patches(np.asarray(moving.dataobj), np.asarray(target.dataobj), m0, out_path,
                              patch=patch, stride=stride, threshold=threshold, pair=pair, field=field)


def read_sidecar(patch_file) -> dict:
    """Read and check the JSON sidecar of a patch file."""
    side = sidecar_path(patch_file)
    try:
        info = json.loads(Path(side).read_text())
    except FileNotFoundError:
        raise QsInputError(f"{side}: sidecar of patch file {Path(patch_file).name} is missing") from None
    except (OSError, ValueError) as exc:
        raise QsInputError(f"{side}: cannot read patch sidecar ({exc})") from None
    if info.get("format") != PATCH_FORMAT:
        raise QsInputError(f"{side}: not a qs patch sidecar (format {info.get('format')!r}, expected {PATCH_FORMAT!r})")
    return info


class PatchDataset(torch.utils.data.Dataset):
    """Training patches of many pairs, read lazily from memory-mapped ``.npy`` files.

    Item ``n`` is ``(x, y)``: ``x`` the images ``(2, p, p, p)`` (moving,
    target) and ``y`` the momentum (or velocity: :attr:`field`)
    ``(3, p, p, p)``, float32 tensors. :meth:`batch` gathers many items at
    once (sorted reads per file). All files must share patch size, stride
    and field.
    """

    def __init__(self, files):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise QsInputError("PatchDataset: no patch files given")
        self.info = [read_sidecar(f) for f in self.files]
        self.patch = self.info[0]["patch"]
        self.stride = self.info[0]["stride"]
        self.field = None
        for f, info in zip(self.files, self.info):
            try:
                field = field_of(info)
            except ValueError as exc:
                raise QsInputError(f"{sidecar_path(f)}: {exc}") from None
            self.field = self.field or field
            if field != self.field:
                raise QsInputError(f"{f}: holds the {field} but {self.files[0].name} the {self.field}; "
                                   "extract all pairs with the same field")
            if (info["patch"], info["stride"]) != (self.patch, self.stride):
                raise QsInputError(
                    f"{f}: patch {info['patch']} / stride {info['stride']} differs from "
                    f"{self.files[0].name} ({self.patch} / {self.stride}); extract all pairs with the same settings"
                )
        self._arrays: list[np.ndarray | None] = [None] * len(self.files)
        counts = np.array([info["n_patches"] for info in self.info], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    def _array(self, f: int) -> np.ndarray:
        if self._arrays[f] is None:
            path = self.files[f]
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise QsInputError(f"{path}: cannot read patch file ({exc})") from None
            p = self.patch
            if arr.shape != (self.info[f]["n_patches"], len(CHANNELS), p, p, p) or arr.dtype != np.float32:
                raise QsInputError(
                    f"{path}: array {arr.shape} {arr.dtype} does not match its sidecar "
                    f"({self.info[f]['n_patches']} patches of {p}^3, 5 channels, float32)"
                )
            self._arrays[f] = arr
        return self._arrays[f]

    def check_files(self) -> None:
        """Open every patch file now (memory-mapped, header only) and check it against its sidecar.

        Lets a caller refuse a bad file before it writes anything; otherwise
        files are opened on first use.
        """
        for f in range(len(self.files)):
            self._array(f)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Global indices -> (file index, row in that file)."""
        indices = np.asarray(indices, dtype=np.int64)
        f = np.searchsorted(self.offsets, indices, side="right") - 1
        return f, indices - self.offsets[f]

    def __getitem__(self, index):
        x, y = self.batch([index])
        return x[0], y[0]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` stacked: ``x`` ``(B, 2, p, p, p)``, ``y`` ``(B, 3, p, p, p)``."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"PatchDataset: index out of range 0..{len(self) - 1}")
        p = self.patch
        out = np.empty((len(indices), len(CHANNELS), p, p, p), dtype=np.float32)
        files, rows = self.locate(indices)
        for f in np.unique(files):
            sel = np.flatnonzero(files == f)
            order = np.argsort(rows[sel], kind="stable")
            out[sel[order]] = self._array(int(f))[rows[sel][order]]
        data = torch.from_numpy(out)
        return data[:, :2], data[:, 2:]

    def abs_mean(self, file_indices=None) -> float:
        """Mean |field| (momentum or velocity) over all values of the given files (from the sidecars)."""
        idx = range(len(self.files)) if file_indices is None else file_indices
        total = sum(sum(self.info[i]["abs_sum"]) for i in idx)
        count = sum(3 * self.info[i]["n_values"] for i in idx)
        return total / count if count else 0.0


def find_patch_files(inputs) -> list[Path]:
    """Resolve patch files from a list of ``.npy`` files and/or folders (``*.npy`` with a sidecar), sorted."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(f for f in item.glob("*.npy") if sidecar_path(f).exists())
            if not found:
                raise QsInputError(f"{item}: folder holds no patch files (NAME.npy with NAME.json)")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise QsInputError(f"{item}: patch file or folder does not exist")
    return files
