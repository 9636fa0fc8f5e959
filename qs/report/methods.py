"""Method names of the report: table names (``predict+correct``), folder names (``predict-correct``), report order."""

from __future__ import annotations

#: table names in report order
METHOD_ORDER = ("affine", "lddmm", "syn", "syn-quick", "predict", "predict+correct", "predict+refine", "predict-mc")
#: methods whose transform is compared with LDDMM's (besides ``affine``)
PREDICTED = ("predict", "predict+correct", "predict+refine", "predict-mc")
#: folder name of a method where it differs from its table name
_FOLDER_NAMES = {"predict+correct": "predict-correct", "predict+refine": "predict-refine"}


def method_name(name: str) -> str:
    """Table name of a method given its table or folder name (``predict-correct`` -> ``predict+correct``)."""
    return {v: k for k, v in _FOLDER_NAMES.items()}.get(name, name)


def method_folder(name: str) -> str:
    """Folder name of a method (``predict+correct`` -> ``predict-correct``)."""
    return _FOLDER_NAMES.get(name, name)


def is_syn(method: str) -> bool:
    """Whether ``method`` is an ANTs SyN baseline (``syn``, ``syn-quick`` or a named ``syn-*`` setting): CPU, its own
    transform chain, not compared with LDDMM's displacement."""
    return method == "syn" or str(method).startswith("syn-")


def report_order(methods) -> list[str]:
    """Methods in report order: named SyN settings after ``syn-quick``, other unknown names after the known ones
    (alphabetical)."""
    methods = list(dict.fromkeys(methods))
    named_syn = sorted(m for m in methods if is_syn(m) and m not in METHOD_ORDER)
    order = [*METHOD_ORDER[:4], *named_syn, *METHOD_ORDER[4:]]
    known = [m for m in order if m in methods]
    return known + sorted(m for m in methods if m not in order)
