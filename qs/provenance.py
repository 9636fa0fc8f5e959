"""Provenance of a results folder: the config, package versions, device, seed and workflow commit behind it.

``qs provenance`` (the workflow's ``provenance`` rule) writes ``results/provenance/``:

* ``config.yaml``: the effective config (validated, defaults filled, resources included);
* ``versions.tsv``: ``package``, ``version`` of Python and the packages the pipeline uses;
* ``device.json``: host, platform, CPU model and cores, torch threads, CUDA availability and GPU
  names, and the torch device each stage's ``device`` setting resolves to on that machine;
* ``seed``: the seed, one line;
* ``stages.tsv``: ``rule``, ``config_keys``, ``digest``: the config keys each workflow rule passes
  to its command (:data:`STAGE_CONFIG`) and a digest of their values, so two results folders can
  be compared stage by stage;
* ``provenance.json``: seed, config digest, qs version, git commit of the workflow (when it is a
  git checkout), creation time, and the names of the files above.

The config digest is the sha256 of the config without ``results`` (where the outputs go), ``limits`` (input safety limits) and the
``resources`` of each stage (how jobs are scheduled), which do not change any result. Snakemake
reruns a job when its params change; the workflow's rules pass exactly the keys of
:data:`STAGE_CONFIG` (tested in ``workflow_tests/test_provenance.py``), so a config change reruns
the stages that read the changed key and what depends on them, and a change of resources reruns
nothing. ``device.json`` describes the machine the provenance job ran on; the device of every
timed job is in the report's ``timing.tsv``.

The collecting functions are pure or only read the environment; :func:`write_provenance` is the
one writer (atomic writes, :func:`qs.io.write_text`).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

import yaml

from . import __version__
from .io import QsInputError, write_json, write_text
from .settings import RULES, rule_keys

#: output file of each provenance item, under ``results/provenance/``
FILES = {
    "config": "config.yaml",
    "versions": "versions.tsv",
    "device": "device.json",
    "seed": "seed",
    "stages": "stages.tsv",
    "summary": "provenance.json",
}

#: distributions listed in ``versions.tsv`` (after Python itself)
PACKAGES = ("qs", "torch", "numpy", "scipy", "pandas", "nibabel", "antspyx", "nilearn", "snakemake",
            "matplotlib", "safetensors", "tqdm", "pyyaml", "jsonschema")

#: config sections whose ``device`` setting is resolved in ``device.json``
DEVICE_STAGES = ("lddmm", "train", "predict")

#: workflow rule -> the config keys its params carry (``*``: every setting), from the one table of
#: settings (:data:`qs.settings.RULES`) that also gives the rules their flags
STAGE_CONFIG: dict[str, tuple[str, ...]] = {rule: rule_keys(rule) for rule in RULES}


# --------------------------------------------------------------------------- config


def settings(config: dict) -> dict:
    """``config`` without the ``resources`` of its sections (a deep copy)."""
    return {k: ({kk: copy.deepcopy(vv) for kk, vv in v.items() if kk != "resources"} if isinstance(v, dict) else copy.deepcopy(v))
            for k, v in config.items()}


def resources(config: dict) -> dict:
    """Section -> its ``resources`` (the part :func:`settings` leaves out)."""
    return {k: copy.deepcopy(v["resources"]) for k, v in config.items() if isinstance(v, dict) and "resources" in v}


def with_resources(settings_: dict, resources_: dict) -> dict:
    """The inverse of :func:`settings` / :func:`resources`: put each section's resources back."""
    out = copy.deepcopy(settings_)
    for section, res in resources_.items():
        if not isinstance(out.get(section), dict):
            raise QsInputError(f"provenance: resources given for '{section}', which is not a config section")
        out[section]["resources"] = copy.deepcopy(res)
    return out


def canonical_json(obj) -> str:
    """Key-sorted compact JSON: equal configs give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(obj) -> str:
    """sha256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def result_settings(config: dict) -> dict:
    """The settings that can change a result: the config without ``results`` (where), ``limits`` (input
    safety limits) and resources."""
    s = settings(config)
    s.pop("results", None)
    s.pop("limits", None)
    return s


def config_digest(config: dict) -> str:
    """Digest of :func:`result_settings`."""
    return digest(result_settings(config))


def select(config: dict, keys) -> dict:
    """Dotted key -> value for ``keys`` (see :data:`STAGE_CONFIG`); a missing key is ``None``."""
    out = {}
    for key in keys:
        if key == "*":
            out[key] = result_settings(config)
            continue
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "resources"}
        out[key] = copy.deepcopy(value)
    return out


def stage_rows(config: dict) -> list[dict]:
    """One row per rule of :data:`STAGE_CONFIG`: ``rule``, ``config_keys``, ``digest`` (16 hex digits)."""
    return [{"rule": rule, "config_keys": ",".join(keys), "digest": digest(select(config, keys))[:16]}
            for rule, keys in STAGE_CONFIG.items()]


# --------------------------------------------------------------------------- environment


def package_versions(packages=PACKAGES) -> dict[str, str]:
    """``python`` and each installed distribution's version (``not installed`` when absent)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _stage_device(setting: str) -> str:
    from .device import resolve_device

    try:
        return str(resolve_device(setting))
    except QsInputError:
        return f"{setting} (not available on this machine)"


def device_info(config: dict | None = None) -> dict:
    """The machine: host, platform, CPU, torch threads, CUDA and GPUs; with ``config``, the torch
    device each stage's ``device`` setting resolves to here (``stage_devices``)."""
    import torch

    cuda = torch.cuda.is_available()
    gpus = []
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_mb": int(p.total_memory // 2**20)})
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count()
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": gpus,
    }
    if config is not None:
        info["stage_devices"] = {s: _stage_device(config[s]["device"]) for s in DEVICE_STAGES
                                 if isinstance(config.get(s), dict) and "device" in config[s]}
    return info


def git_info(path) -> dict:
    """``commit`` and ``dirty`` (uncommitted changes to tracked files) of the git checkout at ``path``;
    ``{}`` when ``path`` is not one or git is missing."""
    if path is None:
        return {}

    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": dirty} if commit else {}


# --------------------------------------------------------------------------- files


def write_provenance(out_dir, config: dict, *, workflow_dir=None, versions: dict | None = None,
                     device: dict | None = None) -> dict[str, Path]:
    """Write the files of :data:`FILES` for the effective ``config`` into ``out_dir``.

    ``workflow_dir``: the workflow's folder, for its git commit (optional). ``versions`` and
    ``device`` default to :func:`package_versions` and :func:`device_info` of this process.
    Returns the paths written; ``provenance.json`` is written last.
    """
    if not isinstance(config.get("seed"), int):
        raise QsInputError("provenance: the config has no integer 'seed'")
    out_dir = Path(out_dir)
    versions = package_versions() if versions is None else versions
    device = device_info(config) if device is None else device
    cdigest = config_digest(config)
    paths = {k: out_dir / name for k, name in FILES.items()}

    header = (f"# The effective qs config of this results folder (defaults filled in).\n"
              f"# config digest (sha256 without results, limits and resources): {cdigest}\n")
    write_text(header + yaml.safe_dump(config, sort_keys=True, default_flow_style=False), paths["config"])
    write_text("package\tversion\n" + "".join(f"{k}\t{v}\n" for k, v in versions.items()), paths["versions"])
    write_json(device, paths["device"], default=str)
    write_text(f"{config['seed']}\n", paths["seed"])
    write_text("rule\tconfig_keys\tdigest\n" + "".join(f"{r['rule']}\t{r['config_keys']}\t{r['digest']}\n"
                                                      for r in stage_rows(config)), paths["stages"])
    git = git_info(workflow_dir)
    summary = {
        "seed": config["seed"],
        "config_digest": cdigest,
        "qs_version": __version__,
        "workflow_dir": str(workflow_dir) if workflow_dir is not None else None,
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": {k: name for k, name in FILES.items() if k != "summary"},
    }
    write_json(summary, paths["summary"])
    return paths


def _read_tsv_pairs(path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines[1:] if "\t" in line)


def read_provenance(folder) -> dict:
    """The files :func:`write_provenance` wrote: ``summary``, ``config``, ``versions`` (name -> version),
    ``device`` (dicts) and ``stages`` (rule -> digest)."""
    folder = Path(folder)
    out = {}
    for key, name in FILES.items():
        path = folder / name
        if not path.is_file():
            raise QsInputError(f"{path}: provenance file does not exist (run qs provenance first)")
        try:
            if key in ("summary", "device"):
                out[key] = json.loads(path.read_text())
            elif key == "config":
                out[key] = yaml.safe_load(path.read_text())
            elif key == "versions":
                out[key] = _read_tsv_pairs(path)
            elif key == "stages":
                out[key] = {r: v.rsplit("\t", 1)[-1] for r, v in _read_tsv_pairs(path).items()}
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise QsInputError(f"{path}: cannot read provenance ({exc})") from exc
    if not isinstance(out["summary"], dict) or not isinstance(out["config"], dict):
        raise QsInputError(f"{folder}: provenance.json and config.yaml must hold mappings")
    return out


def report_items(prov: dict) -> dict:
    """The report's Provenance section from :func:`read_provenance`: label -> text, and the package
    versions as a table (a DataFrame, ``package``, ``version``)."""
    import pandas as pd

    s, d, v = prov["summary"], prov["device"], prov["versions"]
    if s.get("git_commit"):
        workflow = f"git commit {s['git_commit']}" + (" (with uncommitted changes)" if s.get("git_dirty") else "")
    else:
        workflow = "not a git checkout"
    if d.get("cuda_available"):
        gpus = ", ".join(g["name"] for g in d.get("gpus", [])) or "none listed"
        accel = f"CUDA {d.get('cuda_version')} ({gpus})"
    else:
        accel = "no CUDA"
    items = {
        "seed": s.get("seed"),
        "config digest": f"sha256:{s.get('config_digest', '')[:16]} (`provenance/config.yaml`; without results, limits and resources)",
        "workflow": workflow,
        "created": s.get("created"),
        "device": f"{d.get('hostname')}: {d.get('cpu_model')}, {d.get('cpus_available')} of {d.get('cpu_count')} cores, "
                  f"torch threads {d.get('torch_threads')}, {accel}; {d.get('platform')} "
                  "(the provenance job's machine; every timed job's device is in `timing.tsv`)",
    }
    if d.get("stage_devices"):
        items["stage devices (resolved there)"] = ", ".join(f"{k} {val}" for k, val in d["stage_devices"].items())
    items["package versions"] = pd.DataFrame(list(v.items()), columns=["package", "version"])
    return items
