"""Training of the Quicksilver network on patch files, resumable after a kill.

:func:`train` reads the patch files of :func:`qs.patches.write_pair_patches`
(memory-mapped, so the training set may exceed memory) and writes into
``out_dir``:

* ``checkpoint.pt``: after every epoch, atomically: weights, Adam state, the
  torch RNG state(s), the epoch, the loss history and the settings (the
  training options, the model metadata and a fingerprint of every patch
  file's content). Read back with ``torch.load(weights_only=True)`` (no
  arbitrary unpickling). A new call with ``resume`` continues from it when
  the settings are the same (and says so: ``resuming from checkpoint ... at
  epoch N``); the result is bit-identical to an uninterrupted run on the same
  device and thread count. A checkpoint of other settings or data is never
  continued: ``resume=True`` refuses it, ``resume="auto"`` (the ``qs train``
  default, so that a pipeline rerun after a config change just works) says
  so and starts over. The file and the resume rule: :mod:`qs.checkpoint`.
* ``loss.tsv`` (``epoch, train_l1, val_l1, val_zero_l1, seconds``;
  ``val_zero_l1`` is the zero field's validation L1, the level of a network
  that learned nothing) and ``loss.png``.
* ``model.safetensors`` (:func:`qs.model_io.save_model`) at the end.

Loss (``loss``, :data:`qs.losses.LOSSES`): by default (``l1``, the paper's) the mean
absolute error over batch, voxels and components of the scaled momentum
``m0 * momentum_scale`` (``momentum_scale = 1 / mean |m0|`` over the
training patches, stored in the model; for patches of the velocity,
:mod:`qs.fields`, the same with ``v0``: the model records ``field``); ``l2`` and ``lowpass`` are the
alternatives :func:`qs.losses.momentum_loss` describes. The original code sums the L1
over the batch; with Adam this differs only through Adam's epsilon. Whatever
the loss, ``loss.tsv`` reports the L1 error converted back to the field's units
(mean |error| per voxel and component), ``train_l1`` averaged over the
epoch's batches with dropout active, ``val_l1`` with dropout off after the
epoch, so runs with different losses compare.

Determinism: weights initialised after ``torch.manual_seed(seed)``; the
patch order of epoch ``e`` is a permutation drawn from
``numpy.random.default_rng([seed, e])``; dropout draws from the torch RNG
whose state is checkpointed; ``torch.use_deterministic_algorithms`` is on
during training. The caller's global RNG state and determinism flag are
restored afterwards. Validation pairs are drawn with ``default_rng(seed)``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import patch_fingerprint, save_checkpoint, set_rng_state, usable_checkpoint
from .fields import ERROR_LABEL, VELOCITY_CUTOFF_MM
from .io import QsInputError, atomic_path, write_text
from .losses import LOSSES, momentum_loss
from .model_io import KINDS, RUN_KEYS, save_model
from .net import ARCHITECTURES, network_class
from .patches import PatchDataset, find_patch_files

#: metadata the caller passes to :func:`train` (LDDMM settings, grid, modality)
TRAIN_META_KEYS = tuple(k for k in RUN_KEYS if k not in ("kind", "stride", "train_pairs", "train_patches",
                                                          "momentum_scale"))


def _jsonable(meta: dict) -> dict:
    def conv(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    try:
        return json.loads(json.dumps(meta, default=conv, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"train: meta must hold JSON values: {exc}") from None


def split_validation(ds: PatchDataset, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Train and validation patch indices, and the training files.

    With two or more pairs, whole pairs are held out (``round(val_fraction *
    pairs)``, at least 1, at most pairs - 1), so overlapping patches of one
    pair never end up on both sides. With one pair, its patches are split.
    """
    n_files = len(ds.files)
    rng = np.random.default_rng(seed)
    ranges = [np.arange(ds.offsets[f], ds.offsets[f + 1]) for f in range(n_files)]
    if val_fraction <= 0:
        return np.concatenate(ranges), np.zeros(0, dtype=np.int64), list(range(n_files))
    if n_files >= 2:
        n_val = min(n_files - 1, max(1, round(val_fraction * n_files)))
        val_files = sorted(int(f) for f in rng.permutation(n_files)[:n_val])
        train_files = [f for f in range(n_files) if f not in val_files]
        return (np.concatenate([ranges[f] for f in train_files]),
                np.concatenate([ranges[f] for f in val_files]), train_files)
    n = len(ds)
    n_val = min(n - 1, max(1, round(val_fraction * n))) if n >= 2 else 0
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val]), [0]


def write_loss(history: list, out_dir: Path, field: str = "momentum", val_zero_l1: float = math.nan) -> None:
    """Write ``loss.tsv`` and ``loss.png`` from the per-epoch history (errors of the ``field``).

    ``val_zero_l1``: the validation L1 of the zero field (mean |field| over
    the validation patches), repeated on every row and drawn as a dashed
    line: a network whose ``val_l1`` stays at it has learned nothing.
    """
    lines = ["epoch\ttrain_l1\tval_l1\tval_zero_l1\tseconds"]
    lines += [f"{int(e)}\t{tr:.6g}\t{va:.6g}\t{val_zero_l1:.6g}\t{s:.3f}" for e, tr, va, s in history]
    write_text("\n".join(lines) + "\n", out_dir / "loss.tsv")
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5, 3.5), dpi=100)
    ax = fig.add_subplot()
    if history:
        e = [h[0] for h in history]
        ax.plot(e, [h[1] for h in history], "o-", label="train")
        if any(math.isfinite(h[2]) for h in history):
            ax.plot(e, [h[2] for h in history], "s-", label="validation")
        if math.isfinite(val_zero_l1):
            ax.axhline(val_zero_l1, color="0.4", ls="--", label="validation, zero field")
        ax.legend()
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ERROR_LABEL[field])
    ax.set_title("Quicksilver training loss")
    fig.tight_layout()
    with atomic_path(out_dir / "loss.png") as tmp:
        fig.savefig(tmp, format="png")



def _stderr(message: str) -> None:
    print(f"qs train: {message}", file=sys.stderr, flush=True)


def _init_weights(path, architecture: str, features: int) -> tuple[dict, str]:
    """The weights of the ``init`` model file and their digest; refuses another architecture or width."""
    from .model_io import load_model

    model, meta = load_model(path)
    want = network_class(architecture).ARCHITECTURE
    if meta["architecture"] != want or int(meta["features"]) != int(features):
        raise QsInputError(f"{path}: --init model is a {meta['architecture']} network with {meta['features']} "
                           f"features; this training builds a {want} network with {features} features")
    return model.state_dict(), meta["weights_sha256"]


def _load_init(model, weights: dict, path) -> None:
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:  # e.g. another patch size
        first = str(exc).strip().splitlines()[0]
        raise QsInputError(f"{path}: --init weights do not fit the network to train ({first})") from None



def train(
    inputs,
    out_dir,
    *,
    meta: dict,
    kind: str = "prediction",
    architecture: str = "quicksilver",
    features: int = 64,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-4,
    seed: int = 0,
    device="cpu",
    dropout: float = 0.2,
    val_fraction: float = 0.1,
    resume: bool | str = True,
    loss: str = "l1",
    init=None,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = _stderr,
) -> Path:
    """Train the network on patch files; returns the path of ``out_dir/model.safetensors``.

    ``inputs``: patch files (``.npy`` with sidecar) and/or folders of them.
    ``meta``: the settings the model is tied to, stored in the model file:
    ``alpha, beta, gamma, time_steps, sigma`` (LDDMM), ``spacing`` (mm),
    ``modality``; extra JSON keys are kept. ``dropout`` 0 gives the original
    deterministic network, > 0 allows MC-dropout sampling (p = 0.2 in the
    paper). ``on_batch(epoch, batch)`` is called after every optimiser step
    (monitoring, tests). With ``resume``, an existing checkpoint in
    ``out_dir`` from the same data and settings is continued up to
    ``epochs``; one from other data or settings (or with more epochs than
    ``epochs``) is an error with ``resume=True`` and is replaced, starting
    over, with ``resume="auto"``; ``resume=False`` always starts over.
    ``log`` receives one-line messages (resume, start over); default stderr.
    ``init``: a model file whose weights start the training instead of the
    seeded random ones (same architecture, features and patch size, else
    ``QsInputError`` naming it); the workflow starts the correction network
    from the prediction network's (``train.correction_init: prediction``).
    """
    out_dir = Path(out_dir)
    missing = [k for k in TRAIN_META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"train: meta lacks {', '.join(missing)} (the model must record its LDDMM settings)")
    if kind not in KINDS:
        raise ValueError(f"train: kind must be one of {KINDS}, got {kind!r}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"train: epochs ({epochs}), batch_size ({batch_size}) and lr ({lr}) must be positive")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"train: val_fraction must be in [0, 1), got {val_fraction}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"train: architecture must be one of {tuple(ARCHITECTURES)}, got {architecture!r}")
    if loss not in LOSSES:
        raise ValueError(f"train: loss must be one of {LOSSES}, got {loss!r}")
    if resume not in (True, False, "auto"):
        raise ValueError(f"train: resume must be True, False or 'auto', got {resume!r}")
    log = log or (lambda message: None)
    meta = _jsonable(meta)
    device = torch.device(device)

    init_weights, init_digest = _init_weights(init, architecture, features) if init is not None else (None, None)
    files = find_patch_files(inputs)
    ds = PatchDataset(files)
    if len(ds) == 0:
        raise QsInputError(f"train: the {len(files)} patch files hold no patches (all background?)")
    ds.check_files()  # a bad patch file is refused before anything is written
    train_idx, val_idx, train_files = split_validation(ds, val_fraction, seed)
    abs_mean = ds.abs_mean(train_files)
    scale = 1.0 / abs_mean if abs_mean > 0 else 1.0
    val_zero_l1 = _zero_l1(ds, val_idx, batch_size)

    settings = {
        "files": [[f.name, info["n_patches"], patch_fingerprint(f)] for f, info in zip(ds.files, ds.info)],
        "patch": ds.patch, "stride": ds.stride, "kind": kind, "architecture": architecture, "features": int(features),
        "dropout": float(dropout), "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed),
        "val_fraction": float(val_fraction), "meta": meta, "loss": loss,
    }
    if init_digest is not None:  # older checkpoints (no init) keep their settings text
        settings["init"] = init_digest
    settings_text = json.dumps(settings, sort_keys=True)
    ck_path = out_dir / "checkpoint.pt"
    out_dir.mkdir(parents=True, exist_ok=True)

    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    det_before = torch.are_deterministic_algorithms_enabled()
    det_warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    bench_before = torch.backends.cudnn.benchmark
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            model = network_class(architecture)(features, dropout, ds.patch).to(device)
            if init_weights is not None:
                _load_init(model, init_weights, init)
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            start, history = 0, []
            ck = usable_checkpoint(ck_path, settings_text, epochs, device, resume, log) if resume else None
            if ck is not None:
                model.load_state_dict(ck["model"])
                opt.load_state_dict(ck["optimizer"])
                set_rng_state(ck["rng"], device)
                start, history = int(ck["epoch"]), [list(h) for h in ck["history"]]
                log(f"resuming from checkpoint {ck_path} at epoch {start} of {epochs}")
                write_loss(history, out_dir, ds.field, val_zero_l1)
            else:
                start_from = f"from {init}" if init is not None else "from scratch"
                log(f"training {kind} network {start_from}: {epochs} epochs, {len(train_idx)} training patches")
            del ck
            for epoch in range(start + 1, epochs + 1):
                history.append(_run_epoch(model, opt, ds, train_idx, val_idx, scale, epoch, epochs, batch_size,
                                          seed, device, progress, on_batch, loss))
                save_checkpoint(ck_path, epoch=epoch, settings_text=settings_text, model=model, optimizer=opt,
                                device=device, history=history)
                write_loss(history, out_dir, ds.field, val_zero_l1)
    finally:
        torch.use_deterministic_algorithms(det_before, warn_only=det_warn_before)
        torch.backends.cudnn.benchmark = bench_before

    model_meta = dict(meta)
    model_meta.update(
        kind=kind, stride=ds.stride, background_threshold=min(float(i.get("threshold", 0.0)) for i in ds.info),
        train_pairs=len(train_files), train_patches=int(len(train_idx)),
        val_patches=int(len(val_idx)), momentum_scale=scale, epochs=epochs, batch_size=batch_size, lr=lr,
        seed=seed, loss=loss, field=ds.field,
        final_train_l1=history[-1][1], final_val_l1=history[-1][2] if math.isfinite(history[-1][2]) else None,
        val_zero_l1=val_zero_l1 if math.isfinite(val_zero_l1) else None,
    )
    if ds.field == "velocity":
        model_meta.setdefault("velocity_cutoff_mm", VELOCITY_CUTOFF_MM)
    return save_model(model.cpu().eval(), model_meta, out_dir / "model.safetensors")


def _zero_l1(ds: PatchDataset, idx: np.ndarray, batch_size: int) -> float:
    """Mean |field| over the patches ``idx``: the L1 of predicting zero (NaN without patches)."""
    total, count = 0.0, 0
    for b in range(0, len(idx), batch_size):
        _, y = ds.batch(idx[b : b + batch_size])
        total += float(y.abs().sum(dtype=torch.float64))
        count += y.numel()
    return total / count if count else math.nan



def _run_epoch(model, opt, ds, train_idx, val_idx, scale, epoch, epochs, batch_size, seed, device, progress,
               on_batch, loss_kind="l1") -> list:
    t0 = time.perf_counter()
    order = train_idx[np.random.default_rng([seed, epoch]).permutation(len(train_idx))]
    n_batches = math.ceil(len(order) / batch_size)
    model.train()
    total, count = 0.0, 0
    bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not progress,
               mininterval=0.5 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    with bar:
        for b in range(n_batches):
            x, y = ds.batch(order[b * batch_size : (b + 1) * batch_size])
            x, y = x.to(device), y.to(device) * scale
            pred = model(x)
            loss = momentum_loss(pred, y, loss_kind)
            if not torch.isfinite(loss):
                raise RuntimeError(f"train: loss became {loss.item()} in epoch {epoch}, batch {b}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += (pred.detach() - y).abs().sum().item()
            count += y.numel()
            bar.update(1)
            bar.set_postfix(l1=f"{total / count / scale:.4g}", refresh=False)
            if on_batch is not None:
                on_batch(epoch, b)
    train_l1 = total / count / scale
    val_l1 = float("nan")
    if len(val_idx):
        model.eval()
        vtotal, vcount = 0.0, 0
        with torch.no_grad():
            for b in range(0, len(val_idx), batch_size):
                x, y = ds.batch(val_idx[b : b + batch_size])
                x, y = x.to(device), y.to(device) * scale
                vtotal += (model(x) - y).abs().sum().item()
                vcount += y.numel()
        val_l1 = vtotal / vcount / scale
    return [epoch, train_l1, val_l1, time.perf_counter() - t0]
