"""Choose the torch device from a user setting (never at import time)."""

from __future__ import annotations

import torch

from qs.io import QsInputError

CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; ``"cpu"``; ``"cuda"`` or ``"cuda:N"`` (must exist)."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise QsInputError(f"device {name!r}: CUDA is not available on this machine; use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise QsInputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise QsInputError(f"device {name!r}: expected one of {', '.join(CHOICES)} (or cuda:N)")
