"""NIfTI input/output at the edges of the package: validation and atomic writes.

Every reader raises :class:`QsInputError` with the file name and the problem;
every writer writes to a temporary name in the destination folder and renames
it, so an interrupted job never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


class QsInputError(ValueError):
    """Bad user input (file, sheet, config); the message names the file."""


class QsOutputError(QsInputError):
    """A result qs refuses to write (NaN/Inf); the message names the output and what went wrong upstream."""


def _fail(path, problem: str):
    raise QsInputError(f"{path}: {problem}")


def _umask() -> int:
    """The process umask, read from /proc (``os.umask`` has to set it to read it: racy with threads)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary name keeps the file's suffixes (``.nii.gz``, ``.tsv``...) so
    that writers which infer the format from the name keep working. A writer
    killed outright (SIGKILL) leaves its temporary file behind, never a
    half-written ``path``; the next writer of ``path`` (the rerun of the
    killed job) removes such leftovers first. The file gets the mode ``open``
    would give it (0644 under umask 022, 0664 under 002) and is flushed to
    disk (fsync) before the rename.
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
    with contextlib.suppress(OSError):  # mkstemp makes 0600; a file system without modes keeps its own
        os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:  # the data on disk before the name points at them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def count_non_finite(data) -> int:
    """How many values of an array (or CPU tensor) are NaN or +-Inf."""
    data = np.asarray(data)
    return 0 if data.dtype.kind in "biu" else int(np.count_nonzero(~np.isfinite(data)))


def check_finite(items, out) -> None:
    """Raise :class:`QsOutputError` at the first ``(what, data, why)`` whose data hold NaN/Inf (None: skipped).

    Commands call it on all their arrays before writing their first file,
    with ``why`` saying what went wrong upstream; ``out`` (the output file,
    folder or prefix) starts the message.
    """
    for what, data, why in items:
        n = 0 if data is None else count_non_finite(data)
        if n:
            raise QsOutputError(f"{out}: {what} has {n} NaN/Inf voxels; {why}; no output was written")


def save_nifti(img: nib.Nifti1Image, path) -> Path:
    """Write a NIfTI image atomically; NaN/Inf voxels are refused (:func:`check_finite`)."""
    check_finite([("the image to write", img.dataobj, "refusing to write non-finite values")], path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def save_array(data: np.ndarray, affine: np.ndarray, path, *, header=None, dtype=None) -> Path:
    """Write ``data`` with ``affine`` (nibabel world, RAS mm) atomically; NaN/Inf refused (:func:`save_nifti`).

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
    """Write a text file (TSV, Markdown; JSON with :func:`write_json`) atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def non_finite_key(obj, key: str = ""):
    """``(key, value)`` of the first NaN/Inf number in a JSON-like ``obj`` (key as ``a.b[2]``), or None."""
    if isinstance(obj, (float, np.floating)):
        return None if math.isfinite(obj) else (key or "the value", obj)
    if isinstance(obj, dict):
        items = [(f"{key}.{k}" if key else str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(obj)]
    else:
        return None
    for k, v in items:
        found = non_finite_key(v, k)
        if found is not None:
            return found
    return None


def check_json(obj, path) -> None:
    """Raise :class:`QsOutputError` naming ``path`` and the key if ``obj`` holds NaN/Inf (strict JSON has none)."""
    found = non_finite_key(obj)
    if found is not None:
        raise QsOutputError(f"{path}: {found[0]} is {found[1]}, which strict JSON cannot hold; nothing was written")


def write_json(obj, path, *, indent=2, default=None) -> Path:
    """Write ``obj`` as strict JSON (:func:`check_json`: no NaN/Inf) atomically."""
    check_json(obj, path)
    return write_text(json.dumps(obj, indent=indent, allow_nan=False, default=default) + "\n", path)


#: the largest image qs reads, in voxels, unless ``QS_MAX_VOXELS`` says otherwise (the workflow sets it
#: from ``limits.max_voxels``): 2^28 = 268 million voxels, 1 GiB as float32, a 645 mm cube at 1 mm or a
#: whole head at 0.5 mm (512 x 512 x 400 = 105 million)
DEFAULT_MAX_VOXELS = 2**28


def max_voxels() -> int:
    """The voxel limit of :func:`open_nifti`: ``QS_MAX_VOXELS`` when set (a positive integer), else the default."""
    value = os.environ.get("QS_MAX_VOXELS", "")
    if not value:
        return DEFAULT_MAX_VOXELS
    if not value.isdigit() or int(value) < 1:
        raise QsInputError(f"QS_MAX_VOXELS={value!r}: expected a positive whole number of voxels")
    return int(value)


def open_nifti(path, *, what: str = "image") -> nib.Nifti1Image:
    """Open a NIfTI file from its header only, and check what the header promises.

    Refuses, before any voxel is decompressed: a missing file, a folder, a
    broken symbolic link or link loop, an unreadable header, a zero-size
    dimension, and more voxels than :func:`max_voxels` (so that a small file
    whose header claims 1024^3 voxels is refused in milliseconds, not after
    gigabytes of decompression). The voxels are read by :func:`read_voxels`.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        _fail(path, f"{what} file is a broken symbolic link or a symbolic link loop")
    if not path.exists():
        _fail(path, f"{what} file does not exist")
    if path.is_dir():
        _fail(path, f"{what} path is a folder, expected a NIfTI file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for bad files
        _fail(path, f"cannot read {what} as NIfTI ({type(exc).__name__}: {exc})")
    shape = tuple(int(n) for n in img.shape)
    if 0 in shape:
        _fail(path, f"{what} has a zero-size dimension (shape {shape}); the file holds no voxels")
    count, limit = int(np.prod(shape, dtype=np.int64)), max_voxels()
    if count > limit:
        _fail(path, f"{what} header asks for {' x '.join(map(str, shape))} = {count:,} voxels "
                    f"({count * 4 / 2**30:.1f} GiB as float32), more than the limit of {limit:,} voxels; "
                    "raise limits.max_voxels in the config (QS_MAX_VOXELS for a qs command) to read it")
    return img


def read_voxels(img: nib.Nifti1Image, path, *, what: str = "image", dtype=None) -> np.ndarray:
    """The voxels of an image from :func:`open_nifti`; a truncated or damaged file is one error naming it."""
    try:
        data = np.asanyarray(img.dataobj)
        return np.asarray(data, dtype=dtype) if dtype is not None else data
    except Exception as exc:  # gzip, zlib and nibabel raise several types for damaged files
        _fail(path, f"cannot read the voxels of {what}: the file is truncated or damaged ({type(exc).__name__}: {exc})")


def check_orthogonal(affine: np.ndarray, path, *, what: str = "image", tol_degrees: float = 0.1) -> None:
    """Refuse a sheared affine: voxel axes that do not meet at right angles (ANTs cannot represent shear)."""
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = axes.T @ axes
    for i, j in ((0, 1), (0, 2), (1, 2)):
        angle = float(np.degrees(np.arccos(np.clip(cosines[i, j], -1.0, 1.0))))
        if abs(angle - 90.0) > tol_degrees:
            _fail(path, f"{what} has a sheared (non-orthogonal) affine: voxel axes {i} and {j} meet at "
                        f"{angle:.2f} degrees, not 90; ANTs cannot represent shear: resample the image "
                        "onto an orthogonal grid first")


def load_image(path, *, what: str = "image") -> nib.Nifti1Image:
    """Read a 3D NIfTI image and check it: exists, size, readable, 3D, finite, affine.

    A trailing singleton 4th dimension is dropped. Returns a nibabel image
    whose data is float32 in memory.
    """
    path = Path(path)
    img = open_nifti(path, what=what)
    data = read_voxels(img, path, what=what)
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
    check_orthogonal(img.affine, path, what=what)
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
    raw = read_voxels(nib.load(str(path)), path, what="label image")
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
    img = open_nifti(path, what="momentum")
    data = read_voxels(img, path, what="momentum", dtype=np.float32)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] != 3:
        _fail(path, f"momentum must be (I, J, K, 3), got shape {data.shape}")
    if not np.isfinite(data).all():
        _fail(path, "momentum contains NaN/Inf")
    check_same_grid(reference, nib.Nifti1Image(data[..., 0], img.affine), reference_path, path)
    return np.moveaxis(data, -1, 0)
