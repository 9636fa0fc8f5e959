"""Training checkpoints (``checkpoint.pt``): the file, and whether a training run may continue from one.

A checkpoint holds the weights, the Adam state, the torch RNG state(s), the epoch, the loss history and the
training settings as JSON text (the options, the model metadata and a fingerprint of every patch file's
content). It is written atomically after every epoch and read back with ``torch.load(weights_only=True)``
(no arbitrary unpickling). Only a checkpoint of the same settings text is continued (:func:`usable_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .io import QsInputError, atomic_path
from .patches import sidecar_path

CHECKPOINT_FORMAT = "qs-checkpoint-1"


def load_checkpoint(path, device="cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``; refuses anything else."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise QsInputError(
            f"{path}: cannot read training checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "delete it (or train with resume=False) to start over"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise QsInputError(f"{path}: not a qs training checkpoint")
    return ck



def save_checkpoint(path, *, epoch: int, settings_text: str, model, optimizer, device: torch.device, history: list) -> None:
    """Write the checkpoint of the end of ``epoch`` to ``path`` (atomically)."""
    ck = {
        "format": CHECKPOINT_FORMAT, "epoch": epoch, "settings": settings_text,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "rng": _rng_state(device), "history": history,
    }
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)


def patch_fingerprint(patch_file) -> str:
    """Content fingerprint of a patch file: hash of its sidecar (which holds the hash of the patches)."""
    return hashlib.sha256(sidecar_path(patch_file).read_bytes()).hexdigest()[:20]


def _settings_difference(old: str, new: str) -> str:
    """The top-level settings that differ between two checkpoints' settings (JSON texts)."""
    try:
        a, b = json.loads(old), json.loads(new)
    except (TypeError, ValueError):
        return "format"
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join("patch files" if k == "files" else k for k in keys) or "none"


def _rng_state(device: torch.device) -> dict:
    """The torch RNG state, and the CUDA one on a CUDA device."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore the torch RNG state(s) of a checkpoint (the CUDA one on a CUDA device)."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)



def usable_checkpoint(ck_path: Path, settings_text: str, epochs: int, device, resume, log) -> dict | None:
    """The checkpoint at ``ck_path`` if training may continue from it; None if there is none.

    One that cannot be continued (other data or settings, more epochs than
    asked, unreadable) is an error with ``resume=True``; with ``"auto"`` it
    is reported through ``log`` and None is returned (start over).
    """
    if not ck_path.exists():
        return None
    try:
        ck = load_checkpoint(ck_path, device)
    except QsInputError as exc:
        if resume is True:
            raise
        log(f"not resuming: {exc}")
        return None
    problem = None
    if ck["settings"] != settings_text:
        problem = (f"{ck_path}: checkpoint was written for other data or settings "
                   f"(differs in: {_settings_difference(ck['settings'], settings_text)})")
    elif ck["epoch"] > epochs:
        problem = f"{ck_path}: checkpoint has {ck['epoch']} epochs, more than the {epochs} asked"
    if problem is None:
        return ck
    if resume is True:
        raise QsInputError(f"{problem}; delete it or train with resume=False")
    log(f"not resuming: {problem}; starting over")
    return None
