"""The pipeline's settings: one table from config keys to ``qs`` flags, read by the CLI, the rules and provenance.

Each setting's default and description live once, in the config schema
(``qs/schemas/config.schema.yaml``, shipped with the package). :data:`GROUPS`
names groups of config keys and the flag each key has on the commands that take
the group; :data:`RULES` lists the groups (and other config keys) each workflow
rule's params carry. From these:

* :func:`add_group` adds a group's arguments to an argparse parser: type,
  choices, default and help from the schema;
* :func:`group_args` gives a rule the group's arguments from the config
  (``["--alpha", 0.08, ...]``; an empty list value leaves its flag out);
* :func:`rule_keys` gives provenance the config keys of each rule
  (``qs.provenance.STAGE_CONFIG``).
"""

from __future__ import annotations

import argparse
import functools
import json
from importlib import resources
from pathlib import Path

import yaml

#: group name -> {config key (dotted): flag of the commands that take the group}
GROUPS: dict[str, dict[str, str]] = {
    "seed": {"seed": "--seed"},
    "demo": {"cohort.demo.subjects": "--subjects", "cohort.demo.spacing": "--spacing",
             "cohort.test_fraction": "--test-fraction", "cohort.demo.max_displacement_mm": "--max-displacement"},
    "grid": {"grid.spacing": "--spacing", "grid.margin_mm": "--margin"},
    "cohort": {"cohort.source": "--source", "cohort.sheet": "--sheet", "cohort.bids": "--bids",
               "cohort.bids_label_suffixes": "--label-suffixes", "cohort.test_fraction": "--test-fraction",
               "cohort.demo.subjects": "--demo-subjects", "pairs.mode": "--mode",
               "pairs.max_train_pairs": "--max-train-pairs", "pairs.max_test_pairs": "--max-test-pairs"},
    "preprocess": {"preprocess.normalize": "--normalize"},
    # the kernel L = (-alpha Lap - beta grad div + gamma)^2 and the shooting: LDDMM, the fields, the models
    "kernel": {"lddmm.alpha": "--alpha", "lddmm.beta": "--beta", "lddmm.gamma": "--gamma",
               "lddmm.kernel_scales": "--kernel-scales",
               "lddmm.sigma": "--sigma", "lddmm.time_steps": "--time-steps"},
    "lddmm": {"lddmm.iterations": "--iterations", "lddmm.coarse_iterations": "--coarse-iterations",
              "lddmm.similarity": "--similarity", "lddmm.window": "--window", "lddmm.optimizer": "--optimizer",
              "lddmm.device": "--device"},
    # test-time refinement of a prediction (qs predict --refine): its evaluations and the image match
    "refine": {"predict.refine_iterations": "--refine", "predict.refine_coarse_iterations": "--refine-coarse",
               "lddmm.similarity": "--similarity", "lddmm.window": "--window"},
    "patches": {"train.patch": "--patch", "train.stride": "--stride", "train.background_threshold": "--threshold",
                "train.field": "--field"},
    "network": {"train.architecture": "--architecture", "train.features": "--features", "train.epochs": "--epochs",
                "train.batch_size": "--batch-size", "train.lr": "--lr", "train.loss": "--loss",
                "train.dropout": "--dropout", "train.val_fraction": "--val-fraction", "train.device": "--device"},
    "syn": {"evaluate.syn_metric": "--metric", "evaluate.syn_radius": "--radius",
            "evaluate.syn_iterations": "--iterations"},
}

#: what names the atlas in a model file (qs.reuse.atlas_identity; ``qs train --atlas``)
ATLAS_IDENTITY = ("grid.margin_mm", "atlas.source", "atlas.t1")

#: workflow rule -> (groups, other config keys) its params carry. Rules missing here read no config key
#: directly; choices such as the atlas files, the cohort, the compared methods reach them through their
#: input files, whose change reruns them too. ``*``: every setting.
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "demo": (("seed", "demo"), ()),
    "working_grid": (("grid",), ()),
    "cohort_tables": (("seed", "cohort"), ("pairs.reference",)),
    "preprocess": (("seed", "preprocess"), ("preprocess.orientation_search",)),
    "lddmm": (("seed", "kernel", "lddmm"), ()),
    "patches": (("patches", "kernel"), ()),
    "train_prediction": (("seed", "kernel", "network", "preprocess"),
                         ("grid.spacing", "train.target_contrast", *ATLAS_IDENTITY)),
    "correction_patches": (("patches", "kernel"), ("train.device", "predict.stride", "predict.mirror_axes")),
    "train_correction": (("seed", "kernel", "network", "preprocess"),
                         ("grid.spacing", "train.target_contrast", "train.correction_init", *ATLAS_IDENTITY)),
    "predict": (("seed", "kernel", "refine"), ("predict.batch_size", "predict.stride", "predict.mirror_axes", "predict.device",
                                     "predict.corrections", "predict.correction_stride")),
    "register": (("seed", "refine"), ("predict.batch_size", "predict.stride", "predict.mirror_axes", "predict.device",
                              "predict.corrections", "predict.correction_stride", "register.pairs", "register.method")),
    "predict_mc": (("seed", "kernel"), ("predict.batch_size", "predict.stride", "predict.device", "predict.samples")),
    "syn": (("seed", "syn"), ("evaluate.syn_variants",)),
    "evaluate_pair": ((), ("evaluate.exclude_labels",)),
    "report": ((), ("train.field", "evaluate.exclude_labels", "evaluate.label_names")),
    "ablation_patches": (("kernel",), ("train.patch", "train.background_threshold")),
    "ablation_train_prediction": (("seed", "kernel", "network", "preprocess"),
                                  ("grid.spacing", "train.target_contrast", *ATLAS_IDENTITY)),
    "ablation_correction_patches": (("kernel",), ("train.patch", "train.background_threshold", "train.device")),
    "ablation_train_correction": (("seed", "kernel", "network", "preprocess"),
                                  ("grid.spacing", "train.target_contrast", "train.correction_init", *ATLAS_IDENTITY)),
    "ablation_predict": (("seed", "kernel"), ("predict.batch_size", "predict.device")),
    "ablation_evaluate": ((), ("evaluate.exclude_labels",)),
    "ablation_table": ((), ("ablation.variants", "train.patch", "train.dropout")),
    "provenance": ((), ("*",)),
}

_TYPES = {"integer": int, "number": float, "string": str}


def _argument_type(key: str, node: dict):
    """argparse type of a schema node: int/float/str with the schema's bounds and odd-ness checked."""
    kind = _TYPES[node["type"]]
    if kind is str:
        return str
    odd = node.get("not") == {"multipleOf": 2}
    bounds = [(op, node[name]) for name, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                 ("maximum", "<="), ("exclusiveMaximum", "<")) if name in node]

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an odd integer >= 1' if odd else kind.__name__}, got {text!r}") from None
        if odd and (value < 1 or value % 2 == 0):
            raise argparse.ArgumentTypeError(f"must be an odd integer >= 1, got {value}")
        for op, limit in bounds:
            if not {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[op]:
                raise argparse.ArgumentTypeError(f"must be {op} {limit} (config {key}), got {value}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


@functools.cache
def schema() -> dict:
    """The config schema (JSON schema as YAML, shipped in ``qs/schemas``)."""
    return yaml.safe_load(resources.files("qs").joinpath("schemas/config.schema.yaml").read_text())


def schema_of(key: str) -> dict:
    """The schema of one config key (dotted, e.g. ``lddmm.alpha``); KeyError names an unknown key."""
    node = schema()
    for part in key.split("."):
        try:
            node = node["properties"][part]
        except KeyError:
            raise KeyError(f"{key}: not a config key of the schema") from None
    return node


def default(key: str):
    """The schema's default of a config key."""
    return schema_of(key)["default"]


def lookup(config: dict, key: str):
    """The value of a dotted config key in a (validated) config."""
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def add_group(parser, group: str, *, defaults: bool = True, skip=()) -> None:
    """Add the group's flags to ``parser``: type, choices, default and help from the schema.

    ``defaults=False``: every flag defaults to None (e.g. ``qs predict``'s kernel flags, which only
    check the model's settings when given). ``skip``: config keys whose flags the command defines itself.
    """
    for key, flag in GROUPS[group].items():
        if key in skip:
            continue
        node = schema_of(key)
        element = node["items"] if node["type"] == "array" else node
        choices = element.get("enum")
        value = node.get("default") if defaults else None
        shown = " ".join(map(str, value)) if isinstance(value, list) else value
        help_text = node.get("description", "").replace("%", "%%")
        help_text = f"{help_text + '; ' if help_text else ''}config {key}" + (f"; default {shown}" if defaults else "")
        parser.add_argument(flag, type=_argument_type(key, element), choices=choices, default=value, help=help_text,
                            **({"nargs": "+"} if node["type"] == "array" else {}))


def group_args(config: dict, group: str) -> list:
    """A rule's arguments of ``group`` from the config: ``[flag, value, ...]`` (lists: flag, *items; [] and "": left out)."""
    out = []
    for key, flag in GROUPS[group].items():
        value = lookup(config, key)
        if value == [] or value == "":
            continue
        out += [flag, *value] if isinstance(value, list) else [flag, value]
    return out


def rule_keys(rule: str) -> tuple[str, ...]:
    """The config keys (dotted; ``*``: all) that the params of workflow rule ``rule`` carry."""
    groups, extra = RULES[rule]
    keys = [key for group in groups for key in GROUPS[group]]
    return tuple(dict.fromkeys([*keys, *extra]))


def check_table() -> None:
    """Every key of :data:`GROUPS` and :data:`RULES` is in the schema with a default (a test calls this)."""
    for key in {k for g in GROUPS.values() for k in g} | {k for _, extra in RULES.values() for k in extra if k != "*"}:
        if "default" not in schema_of(key):
            raise KeyError(f"{key}: no default in the schema")



def _merged(base: dict, over: dict) -> dict:
    """``base`` updated by ``over``, nested mappings merged key by key (``over`` wins)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def with_demo_budget(config: dict, demo_file) -> dict:
    """The config of a run: for the demo cohort (``cohort.source`` ``demo``, the schema's default) the demo's
    CPU budget ``demo_file`` (``config/demo.yaml``) under the user's ``config``; any other cohort: ``config``
    unchanged (the schema's defaults fill the rest when the workflow validates it)."""
    source = (config.get("cohort") or {}).get("source", default("cohort.source"))
    if source != "demo":
        return dict(config)
    with open(demo_file) as f:
        budget = yaml.safe_load(f) or {}
    return _merged(budget, config)


# --- presets: settings that fit the hardware (config/presets/<name>.yaml) ---------------------------------

#: the presets a config names with ``preset:`` (the schema's enum; ``config/presets/<name>.yaml``)
PRESETS = ("cpu", "gpu")


def _nested(key: str, value) -> dict:
    """``{"a": {"b": value}}`` for the dotted key ``a.b``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_preset(name: str, presets_dir) -> dict:
    """The settings of preset ``name``: ``presets_dir/<name>.yaml``, whose ``include: {file, keys}`` (optional)
    copies the dotted ``keys`` that exist in ``file`` (relative to the preset file) under the file's own settings.

    The ``cpu`` preset includes the hardware sections of ``config/demo.yaml``: the tested CPU recipe has one copy.
    """
    if name not in PRESETS:
        raise ValueError(f"preset: {name!r} is not one of {', '.join(PRESETS)}")
    path = Path(presets_dir) / f"{name}.yaml"
    own = yaml.safe_load(path.read_text()) or {}
    include = own.pop("include", None)
    out: dict = {}
    if include:
        source = yaml.safe_load((path.parent / include["file"]).read_text()) or {}
        for key in include["keys"]:
            try:
                out = _merged(out, _nested(key, lookup(source, key)))
            except (KeyError, TypeError):
                continue  # a key the included file does not set: the schema's default
    return _merged(out, own)


def preset_of(config: dict) -> str:
    """The preset a (user's) config runs with: its ``preset``, else ``cpu`` for the demo cohort (its budget,
    config/demo.yaml, is the CPU recipe) and the schema's default for any other cohort."""
    if config.get("preset"):
        return config["preset"]
    source = (config.get("cohort") or {}).get("source", default("cohort.source"))
    return "cpu" if source == "demo" else default("preset")


def run_config(config: dict, presets_dir, demo_file) -> dict:
    """The config of a run, lowest first: the schema's defaults (filled in when the workflow validates), the
    preset (:func:`load_preset`), the demo's budget ``demo_file`` (config/demo.yaml: the demo cohort only), the
    user's ``config`` (--configfile, --config). ``preset`` is set to the one used."""
    name = preset_of(config)
    if name not in PRESETS:  # the schema refuses it with the user's file named
        return dict(config)
    out = _merged(load_preset(name, presets_dir), with_demo_budget(config, demo_file))
    out["preset"] = name
    return out


# --- the configuration reference (config/README.md), generated from the schema ------------------------------


def schema_keys() -> list[tuple[str, dict]]:
    """Every config key of the schema (dotted), depth first: objects are walked, a stage's ``resources`` (a
    ``$ref``) is one key, arrays are leaves. The resources' own keys are ``resources.<name>``, listed first."""
    node = schema()
    keys = [(f"resources.{name}", sub) for name, sub in node["definitions"]["resources"]["properties"].items()]

    def walk(prefix, props):
        for name, sub in props.items():
            key = f"{prefix}{name}"
            if sub.get("type") == "object" and "properties" in sub and "$ref" not in sub:
                keys.append((key, sub))
                walk(f"{key}.", sub["properties"])
            else:
                keys.append((key, sub))

    walk("", node["properties"])
    return keys


def shown_default(node: dict) -> str:
    """A key's default as config/README.md shows it (JSON; a stage's resources: the definition's)."""
    if "$ref" in node:
        return "see resources.*"
    return json.dumps(node["default"]) if "default" in node else ""


def reference_markdown() -> str:
    """config/README.md's tables: every key of the schema with its type, default and description."""

    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    def kind(node) -> str:
        if "$ref" in node:
            return "resources"
        element = node.get("items", {}) if node.get("type") == "array" else node
        enum = element.get("enum")
        base = node.get("type", "object")
        if node.get("type") == "array" and "type" in element:
            base = f"array of {element['type']}"
        elif node.get("type") == "array":
            base = "array"
        return f"{base}: {', '.join(map(str, enum))}" if enum else base

    rows, section = [], None
    for key, node in schema_keys():
        nested = "." in key or node.get("type") == "object" or "$ref" in node
        top = key.split(".")[0] if nested else "top level"
        if top != section:
            section = top
            title = "resources (every stage's `<stage>.resources`)" if top == "resources" else top
            rows += ["", f"### {title}", "", "| key | type | default | description |", "|---|---|---|---|"]
        rows.append(f"| `{key}` | {cell(kind(node))} | `{cell(shown_default(node))}` | "
                    f"{cell(node.get('description', ''))} |")
    return "\n".join(rows).lstrip("\n") + "\n"


#: the markers around the generated part of config/README.md
REFERENCE_BEGIN = "<!-- generated by python -m qs.settings config/README.md: do not edit below -->"
REFERENCE_END = "<!-- end of the generated part -->"


def write_reference(path) -> None:
    """Replace the generated part of ``path`` (config/README.md) by :func:`reference_markdown`."""
    text = Path(path).read_text()
    head, _, rest = text.partition(REFERENCE_BEGIN)
    _, _, tail = rest.partition(REFERENCE_END)
    Path(path).write_text(f"{head}{REFERENCE_BEGIN}\n\n{reference_markdown()}\n{REFERENCE_END}{tail}")


if __name__ == "__main__":  # python -m qs.settings config/README.md
    import sys

    write_reference(sys.argv[1])
