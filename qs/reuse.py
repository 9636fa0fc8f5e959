"""Reusing trained models in another run (config ``models.prediction``, ``models.correction``).

A model predicts on the working grid of the run that trained it: the atlas,
its grid (spacing, margin), the intensity normalisation, the LDDMM kernel and
time steps, the learned field, the architecture and the contrasts. Training
records them in the model's metadata (:func:`model_settings`); a run that
reuses the model compares them with its own config before any job starts
(:func:`check_model_fits`) and refuses a mismatch in one line naming the
setting, the model's value and the config's.

``atlas`` in the metadata is :func:`atlas_identity`: ``builtin`` (the packaged
MNI template) or the sha256 of the atlas T1 file, with the grid margin.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .io import QsInputError
from .model_io import read_meta, same_value
from .net import ARCHITECTURES, network_class

#: the built-in atlas' name in :func:`atlas_identity`
BUILTIN_ATLAS = "builtin MNI ICBM152 2009a"


def file_sha256(path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atlas_identity(config: dict) -> str:
    """The atlas a run's working grid is built from: ``"builtin MNI ICBM152 2009a, margin 8.0 mm"`` or
    ``"sha256:<first 16 hex digits of the atlas T1 file>, margin 8.0 mm"`` (``atlas.source: files``)."""
    margin = f"margin {float(config['grid']['margin_mm'])} mm"
    if config["atlas"]["source"] == "builtin":
        return f"{BUILTIN_ATLAS}, {margin}"
    t1 = Path(config["atlas"]["t1"])
    if not t1.is_file():
        raise QsInputError(f"config: atlas.t1: {t1} does not exist")
    return f"sha256:{file_sha256(t1)[:16]}, {margin}"


def modality(config: dict) -> str:
    """The networks' contrasts, ``T1->T1`` or ``T1->T2`` (``train.target_contrast``)."""
    return "T1->T2" if config["train"]["target_contrast"] == "T2" else "T1->T1"


def model_settings(config: dict) -> dict[str, tuple[str, object]]:
    """The settings a model is tied to: metadata key -> (config setting, this config's value)."""
    lddmm, train = config["lddmm"], config["train"]
    spacing = float(config["grid"]["spacing"])
    out = {
        "spacing": ("grid.spacing", [spacing] * 3),
        "atlas": ("atlas", atlas_identity(config)),
        "normalize": ("preprocess.normalize", config["preprocess"]["normalize"]),
        "field": ("train.field", train["field"]),
        "architecture": ("train.architecture", train["architecture"]),
        "modality": ("train.target_contrast", modality(config)),
    }
    out.update({k: (f"lddmm.{k}", lddmm[k]) for k in ("alpha", "beta", "gamma", "sigma", "time_steps")})
    return out


def check_model_fits(path, kind: str, config: dict) -> dict:
    """Refuse (:class:`QsInputError`, one line) a model file that does not fit this run's ``config``.

    Checks the model's ``kind`` and every setting of :func:`model_settings`;
    the message names the setting, the model's value and the config's.
    Reads the metadata only. Returns the metadata.
    """
    meta = read_meta(path)
    if meta["kind"] != kind:
        raise QsInputError(f"{path}: models.{kind} is a {meta['kind']} model; give the {kind} model "
                           f"(models/{kind}/model.safetensors of the training run)")
    for key, (setting, want) in model_settings(config).items():
        have = meta.get(key)
        if key == "spacing" and isinstance(have, (int, float)):
            have = [have] * 3
        if key == "architecture":  # the file records the class's name: compare the config's names
            have = next(name for name, cls in ARCHITECTURES.items() if cls is network_class(have))
        if have is None or not same_value(have, want):
            shown = "no value (trained before qs recorded it)" if have is None else repr(have)
            raise QsInputError(f"{path}: {setting}: the model has {shown}, the config has {want!r}; set "
                               f"{setting} to the model's value, or train a model with this config")
    return meta


def trained_on(meta: dict) -> str:
    """One line on the data and run that trained a model, from its metadata (``trained_on``)."""
    info = meta.get("trained_on")
    if not isinstance(info, dict):
        return f"no record of the cohort (training pairs: {meta.get('train_pairs', '?')})"
    return (f"cohort {info.get('cohort', '?')} (training pairs: {meta.get('train_pairs', '?')}), "
            f"run {info.get('results', '?')}")
