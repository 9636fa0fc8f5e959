"""Model files: safetensors weights plus JSON metadata, never pickle.

A model file is a ``.safetensors`` file whose header metadata holds one
entry, ``"qs"``: a JSON object with everything needed to use the weights
(:data:`REQUIRED_KEYS`):

* network: ``architecture`` (:data:`qs.net.ARCHITECTURES`), ``patch``, ``stride``, ``features``, ``dropout``;
* normalisation: ``momentum_scale`` (the net predicts ``m0 * momentum_scale``,
  or ``v0 * momentum_scale`` for a model whose optional ``field`` is
  ``velocity``, :mod:`qs.fields`), ``intensity`` (a description of the
  input convention);
* LDDMM kernel and shooting: ``alpha``, ``beta``, ``gamma``, ``time_steps``,
  ``sigma``; working grid ``spacing`` (mm, 3 values); ``modality``
  (e.g. ``"T1->T1"``);
* provenance: ``kind`` (``"prediction"`` or ``"correction"``),
  ``train_pairs``, ``train_patches``, ``qs_version``, ``torch_version``;
* integrity: ``weights_sha256``, a digest of every tensor's name, dtype,
  shape and bytes, checked on load (a file whose weights were altered after
  saving is refused).

:func:`load_model` never unpickles: safetensors is parsed by its own
(non-executing) reader, so a pickle disguised as a model is refused before
any of its content is interpreted.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from . import __version__
from .fields import field_of
from .io import QsInputError, atomic_path, non_finite_key
from .net import network_class

MODEL_FORMAT = "qs-model-1"
KINDS = ("prediction", "correction")

#: keys the caller supplies to :func:`save_model` (the rest are filled in)
RUN_KEYS = ("kind", "stride", "alpha", "beta", "gamma", "time_steps", "sigma", "spacing", "modality",
            "train_pairs", "train_patches", "momentum_scale")
#: LDDMM settings a model is tied to (compare them with ``expect`` at prediction)
LDDMM_KEYS = ("alpha", "beta", "gamma", "time_steps", "sigma", "kernel_scales")
#: the value of a key that models written before it existed mean (a single-width kernel)
IMPLIED = {"kernel_scales": [1.0]}
REQUIRED_KEYS = ("format", "architecture", "patch", "features", "dropout", "intensity", "qs_version",
                 "torch_version", "weights_sha256") + RUN_KEYS

INTENSITY = "per-image intensities in [0, 1] from the pre-processing; channel 0 moving, 1 target"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v) -> bool:
    return _finite(v) and float(v).is_integer()


def _spacing(v) -> bool:
    values = v if isinstance(v, list) else [v]
    return len(values) in (1, 3) and all(_finite(h) and h > 0 for h in values)


#: the metadata numbers and the values they may take: key -> (test, what it asks); optional keys checked when present
META_RANGES = {
    **{k: (lambda v: _whole(v) and v >= 1, "a whole number >= 1") for k in ("patch", "features", "stride",
                                                                             "time_steps", "power")},
    **{k: (lambda v: _whole(v) and v >= 0, "a whole number >= 0") for k in ("train_pairs", "train_patches", "pad")},
    **{k: (lambda v: _finite(v) and v > 0, "a finite number > 0") for k in ("alpha", "gamma", "sigma",
                                                                            "momentum_scale", "velocity_cutoff_mm")},
    "beta": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "dropout": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "background_threshold": (_finite, "a finite number"),
    "spacing": (_spacing, "3 finite numbers > 0 (mm), or 1 for all axes"),
}


def check_meta_numbers(meta: dict, path) -> None:
    """Raise :class:`QsInputError` naming the file and the key of a NaN/Inf or out-of-range metadata number."""
    found = non_finite_key(meta)
    if found is not None:
        raise QsInputError(f"{path}: model metadata {found[0]} is {found[1]}; a model holds finite numbers only")
    for key, (ok, want) in META_RANGES.items():
        if key in meta and not ok(meta[key]):
            raise QsInputError(f"{path}: model metadata {key} = {meta[key]!r} is out of range (must be {want})")


def check_weights(weights: dict, path) -> None:
    """Raise :class:`QsInputError` naming the file and a tensor if any weight is NaN/Inf."""
    bad = {k: int((~torch.isfinite(t)).sum()) for k, t in weights.items() if t.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        raise QsInputError(f"{path}: weight {first} has {bad[first]} NaN/Inf values ({sum(bad.values())} in "
                           f"{len(bad)} tensors); the file is damaged or its training diverged: retrain the model")


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def missing_keys(meta: dict, keys=RUN_KEYS) -> list[str]:
    return [k for k in keys if k not in meta]


def save_model(model, meta: dict, path) -> Path:
    """Write ``model``'s weights and ``meta`` (must hold :data:`RUN_KEYS`) atomically.

    The network keys (``patch``, ``features``, ``dropout``), versions,
    format and digest are taken from the model and the environment.
    """
    missing = missing_keys(meta)
    if missing:
        raise ValueError(f"save_model: metadata lacks {', '.join(missing)}")
    if meta["kind"] not in KINDS:
        raise ValueError(f"save_model: kind must be one of {KINDS}, got {meta['kind']!r}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    full = dict(meta)
    full.update(
        format=MODEL_FORMAT,
        architecture=model.ARCHITECTURE,
        patch=model.patch,
        features=model.features,
        dropout=model.dropout,
        intensity=meta.get("intensity", INTENSITY),
        qs_version=__version__,
        torch_version=torch.__version__,
        weights_sha256=weights_digest(tensors),
    )
    try:
        text = json.dumps(full, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save_model: metadata must be JSON (finite numbers, strings, lists): {exc}") from None
    path = Path(path)
    data = safetensors_bytes(tensors, metadata={"qs": text})  # bytes: safetensors' own file writer makes 0600 files
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_meta(path) -> dict:
    """The metadata of a model file, checked for format and completeness (weights not read)."""
    meta, _ = _read(path, tensors=False)
    return meta


def _pickle_kind(path: Path) -> str | None:
    """Which pickle-based format ``path`` looks like, judged from its first bytes (never unpickled)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a torch.save zip archive holding a pickle; refused unread, unpickling can run code"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocols 2 to 5
        return "a Python pickle; refused unread, unpickling can run code"
    return None


def _read(path, *, tensors: bool):
    path = Path(path)
    if not path.is_file():
        raise QsInputError(f"{path}: model file does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()} if tensors else None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise QsInputError(
            f"{path}: not a valid safetensors model file ({_pickle_kind(path) or f'{type(exc).__name__}: {exc}'}); "
            "qs reads only models written by qs (weights in safetensors, no pickle)"
        ) from None
    if "qs" not in header:
        raise QsInputError(f"{path}: safetensors file without qs metadata; not a qs model")
    try:
        meta = json.loads(header["qs"])
    except ValueError as exc:
        raise QsInputError(f"{path}: qs metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise QsInputError(f"{path}: qs metadata is not a JSON object")
    if meta.get("format") != MODEL_FORMAT:
        raise QsInputError(f"{path}: model format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    missing = missing_keys(meta, REQUIRED_KEYS)
    if missing:
        raise QsInputError(f"{path}: model metadata lacks {', '.join(missing)}")
    try:
        network_class(str(meta["architecture"]))
        field_of(meta)
    except ValueError as exc:
        raise QsInputError(f"{path}: model metadata: {exc}") from None
    check_meta_numbers(meta, path)
    return meta, weights


def same_value(a, b) -> bool:
    """Metadata values equal: numbers to 1e-6 relative, lists element by element, anything else with ``==``."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def check_expect(meta: dict, expect: dict, path) -> None:
    """Raise :class:`QsInputError` naming every key whose model value differs from the run's."""
    problems = []
    for key, want in expect.items():
        have = meta.get(key, IMPLIED.get(key))
        if have is None:
            problems.append(f"{key}: the model has no value, this run uses {want!r}")
        elif not same_value(have, list(want) if isinstance(want, tuple) else want):
            problems.append(f"{key}: the model has {have!r}, this run uses {want!r}")
    if problems:
        raise QsInputError(
            f"{path}: model does not match this run's settings ("
            + "; ".join(problems)
            + "). Use a model trained with these settings, or retrain it."
        )


def load_model(path, expect: dict | None = None, device="cpu"):
    """Read a model file; returns ``(model in eval mode on device, metadata)``.

    Refuses (``QsInputError`` naming the file): files that are not
    safetensors (pickles included, never executed), files without complete
    qs metadata, metadata numbers out of range (:data:`META_RANGES`) or
    NaN/Inf, NaN/Inf weights, weights whose digest does not match the metadata, weights
    that do not fit the architecture, and metadata that differs from
    ``expect`` (e.g. ``{"alpha": 0.01, ..., "kind": "prediction"}``).
    """
    meta, weights = _read(path, tensors=True)
    if weights_digest(weights) != meta["weights_sha256"]:
        raise QsInputError(f"{path}: weights do not match the sha256 stored in the metadata; "
                           "the file was altered or damaged after saving")
    check_weights(weights, path)
    if expect:
        check_expect(meta, expect, path)
    described = (f"architecture {meta['architecture']!r}, features {meta['features']!r}, "
                 f"dropout {meta['dropout']!r}, patch {meta['patch']!r}")
    try:
        model = network_class(str(meta["architecture"]))(int(meta["features"]), float(meta["dropout"]),
                                                         int(meta["patch"]))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise QsInputError(f"{path}: metadata describes no valid network ({described}: {exc})") from None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    problems = [f"{k} missing" for k in want if k not in have]
    problems += [f"{k} unexpected" for k in have if k not in want]
    problems += [f"{k} has shape {have[k]}, the network needs {want[k]}" for k in want if k in have and have[k] != want[k]]
    if problems:
        more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
        raise QsInputError(f"{path}: weights do not fit the network described by its metadata ({described}): "
                           + "; ".join(problems[:2]) + more)
    try:
        model.load_state_dict(weights, strict=True)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise QsInputError(f"{path}: weights do not fit the network described by its metadata ({first})") from None
    return model.to(device).eval(), meta
