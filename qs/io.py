"""NIfTI input/output at the edges of the package: validation and atomic writes.

Every reader raises :class:`QsInputError` with the file name and the problem;
every writer writes to a temporary name in the destination folder and renames
it, so an interrupted job never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


class QsInputError(ValueError):
    """Bad user input (file, sheet, config); the message names the file."""


def _fail(path, problem: str):
    raise QsInputError(f"{path}: {problem}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary name keeps the file's suffixes (``.nii.gz``, ``.tsv``...) so
    that writers which infer the format from the name keep working. A writer
    killed outright (SIGKILL) leaves its temporary file behind, never a
    half-written ``path``; the next writer of ``path`` (the rerun of the
    killed job) removes such leftovers first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if path.suffixes else ""
    prefix = f".{path.name.split('.')[0]}."
    leftover = re.compile(re.escape(prefix) + r"[a-z0-9_]+" + re.escape(".tmp" + suffix))
    for old in path.parent.glob(f"{prefix}*.tmp{suffix}"):
        if leftover.fullmatch(old.name):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_nifti(img: nib.Nifti1Image, path) -> Path:
    """Write a NIfTI image atomically."""
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def save_array(data: np.ndarray, affine: np.ndarray, path, *, header=None, dtype=None) -> Path:
    """Write ``data`` with ``affine`` (nibabel world, RAS mm) atomically.

    Integer arrays keep an integer on-disk type (labels with large ids stay
    exact); float arrays are stored as float32 unless ``dtype`` says otherwise.
    """
    data = np.asarray(data)
    if dtype is None:
        dtype = np.int32 if np.issubdtype(data.dtype, np.integer) else np.float32
    img = nib.Nifti1Image(data.astype(dtype, copy=False), affine, header=header)
    img.set_data_dtype(dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return save_nifti(img, path)


def copy_file(src, path) -> Path:
    """Copy ``src`` to ``path`` atomically (e.g. a transform ANTs wrote to its temp folder)."""
    with atomic_path(path) as tmp:
        shutil.copyfile(src, tmp)
    return Path(path)


def write_text(text: str, path) -> Path:
    """Write a text file (TSV, Markdown, JSON) atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def load_image(path, *, what: str = "image") -> nib.Nifti1Image:
    """Read a 3D NIfTI image and check it: exists, readable, 3D, finite.

    A trailing singleton 4th dimension is dropped. Returns a nibabel image
    whose data is float32 in memory.
    """
    path = Path(path)
    if not path.exists():
        _fail(path, f"{what} file does not exist")
    if path.is_dir():
        _fail(path, f"{what} path is a folder, expected a NIfTI file")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for bad files
        _fail(path, f"cannot read {what} as NIfTI ({type(exc).__name__}: {exc})")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        _fail(path, f"{what} must be 3D, got shape {tuple(data.shape)}")
    if min(data.shape) < 2:
        _fail(path, f"{what} has a degenerate shape {tuple(data.shape)}")
    data = np.asarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        _fail(path, f"{what} contains {int(bad.sum())} NaN/Inf voxels")
    if not np.isfinite(img.affine).all() or abs(np.linalg.det(img.affine[:3, :3])) < 1e-12:
        _fail(path, f"{what} has an invalid (singular or non-finite) affine")
    out = nib.Nifti1Image(data, img.affine, header=img.header)
    out.set_data_dtype(np.float32)
    return out


def load_labels(path, *, reference: nib.Nifti1Image | None = None, reference_path=None) -> nib.Nifti1Image:
    """Read an integer label image; check integer values, not empty, grid.

    Values must be integral (stored as float is accepted if exactly integral);
    at least one voxel must be non-zero. With ``reference``, the label image
    must share its shape and affine. Data are returned as int32.
    """
    path = Path(path)
    img = load_image(path, what="label image")
    raw = np.asanyarray(nib.load(str(path)).dataobj)
    if raw.ndim == 4:
        raw = raw[..., 0]
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.all(np.mod(raw, 1) == 0):
            _fail(path, "label image has non-integer values (labels must be integer ids)")
    data = np.asarray(raw).astype(np.int64)
    if data.min() < 0 or data.max() > np.iinfo(np.int32).max:
        _fail(path, f"label ids must be between 0 and 2^31-1, found {data.min()} to {data.max()}")
    if not data.any():
        _fail(path, "label image is empty (all voxels are 0)")
    if reference is not None:
        check_same_grid(reference, img, reference_path or "reference image", path)
    out = nib.Nifti1Image(data.astype(np.int32), img.affine)
    out.set_data_dtype(np.int32)
    return out


def check_same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, name_a, name_b, *, atol: float = 1e-3) -> None:
    """Raise if two images do not share shape and affine (within ``atol`` mm)."""
    if a.shape[:3] != b.shape[:3]:
        raise QsInputError(
            f"{name_b}: grid shape {tuple(b.shape[:3])} differs from {name_a} {tuple(a.shape[:3])}; "
            "resample both onto the same working grid first (see the preprocess stage)"
        )
    if not np.allclose(a.affine, b.affine, atol=atol):
        raise QsInputError(
            f"{name_b}: affine differs from {name_a} (max difference "
            f"{np.abs(a.affine - b.affine).max():.4g}); images must be on the same working grid"
        )


def spacing(img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel size in mm along the three voxel axes."""
    return tuple(float(s) for s in np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0)))


def load_momentum(path, reference: nib.Nifti1Image, reference_path) -> np.ndarray:
    """A momentum NIfTI ``(I, J, K, 3)`` on the grid of ``reference``, as ``(3, I, J, K)`` float32."""
    path = Path(path)
    if not path.is_file():
        _fail(path, "momentum file does not exist")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] != 3:
        _fail(path, f"momentum must be (I, J, K, 3), got shape {data.shape}")
    if not np.isfinite(data).all():
        _fail(path, "momentum contains NaN/Inf")
    check_same_grid(reference, nib.Nifti1Image(data[..., 0], img.affine), reference_path, path)
    return np.moveaxis(data, -1, 0)
