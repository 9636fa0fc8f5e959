"""Input validation of one subject's files, before any work is done on them."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from .io import QsInputError, load_image, load_labels, spacing


def _describe(img: nib.Nifti1Image) -> dict:
    data = np.asarray(img.dataobj)
    return {
        "shape": list(img.shape[:3]),
        "spacing_mm": [round(s, 4) for s in spacing(img)],
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "min": float(data.min()),
        "max": float(data.max()),
    }


def validate_subject(subject: str, t1, *, t2=None, labels=None) -> dict:
    """Check a subject's T1 (and T2, labels); return a summary dict.

    Raises :class:`qs.io.QsInputError` naming the file for: missing or
    unreadable files, images that are not 3D, NaN/Inf voxels, a constant
    (empty) T1, labels that are empty, not integer or not on the T1 grid.
    """
    t1_img = load_image(t1, what="T1 image")
    report = {"subject": subject, "t1": {"path": str(t1), **_describe(t1_img)}}
    if report["t1"]["max"] <= report["t1"]["min"]:
        raise QsInputError(f"{t1}: T1 image is constant ({report['t1']['min']}); nothing to register")
    if t2:
        report["t2"] = {"path": str(t2), **_describe(load_image(t2, what="T2 image"))}
    if labels:
        lab = load_labels(labels, reference=t1_img, reference_path=t1)
        ids = np.unique(np.asarray(lab.dataobj))
        report["labels"] = {"path": str(labels), "n_labels": int((ids > 0).sum()), "max_id": int(ids.max())}
    return report


def config_error(exc: BaseException, sources=()) -> str | None:
    """One line ``qs: error: config (FILES): KEY: problem`` for a config that fails its schema; else None.

    ``exc`` is the ``WorkflowError`` that ``snakemake.utils.validate`` raises
    (it carries the ``jsonschema`` ``ValidationError``), ``sources`` the config
    files (``workflow.configfiles``). In the workflow::

        try:
            validate(config, schema="../qs/schemas/config.schema.yaml")
        except WorkflowError as exc:
            message = config_error(exc, workflow.configfiles)
            if message is None:
                raise
            sys.exit(message)
    """
    err = exc
    for _ in range(4):  # the jsonschema error is the WorkflowError's context
        if err is None or hasattr(err, "json_path"):
            break
        err = err.__cause__ or err.__context__
    if not hasattr(err, "json_path"):
        return None
    key = err.json_path.removeprefix("$").lstrip(".") or "(top level)"
    files = ", ".join(str(s) for s in sources) or "--config"
    message = err.message
    if err.validator == "not":  # jsonschema prints the negated sub-schema; the key's description says what is meant
        message = f"{err.instance!r} is not allowed ({err.schema.get('description', 'see the schema')})"
    return f"qs: error: config ({files}): {key}: {message}"
