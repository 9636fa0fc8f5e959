"""The documents say what exists: every ``qs`` subcommand, snakemake target and config key the README names is real;
config/README.md lists every key of the schema with its default; docs/cli.md documents every subcommand."""

from __future__ import annotations

import copy
import re
import shlex

import pytest
import yaml
from conftest import ROOT
from snakemake.utils import validate

from qs import settings
from qs.cli import build_parser

README = (ROOT / "README.md").read_text()
SCHEMA = str(ROOT / "qs" / "schemas" / "config.schema.yaml")
#: snakemake options that take a value (the value is no target)
VALUED = {"--cores", "-c", "--jobs", "-j", "--configfile", "--profile", "--config", "--directory", "-d", "--report",
          "--snakefile", "-s"}


def subcommands() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


def rules() -> set[str]:
    files = [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]
    return {m for f in files for m in re.findall(r"^\s*(?:local)?rule (\w+):", f.read_text(), re.M)}


def code(text: str) -> list[str]:
    """The inline code spans and the lines of the fenced code blocks of a Markdown text."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    rest = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    spans = [" ".join(m.split()) for m in re.findall(r"`([^`]+)`", rest)]  # a span may wrap a line
    return [ln for b in blocks for ln in b.splitlines()] + spans


def is_key(key: str) -> bool:
    """A config key of the schema: dotted, ``<stage>.resources.<name>``, or a prefix ending in ``*``."""
    keys = {k for k, _ in settings.schema_keys()}
    if key.endswith("*"):
        return any(k.startswith(key[:-1]) for k in keys)
    parts = key.split(".")
    if len(parts) == 3 and parts[1] == "resources":
        return f"{parts[0]}.resources" in keys and f"resources.{parts[2]}" in keys
    return key in keys


def yaml_keys(mapping: dict, prefix="") -> list[str]:
    out = []
    for name, value in mapping.items():
        key = f"{prefix}{name}"
        out.append(key)
        if isinstance(value, dict):
            out += yaml_keys(value, f"{key}.")
    return out


def test_the_readme_is_at_most_12000_characters():
    assert len(README) <= 12000, len(README)


def test_every_qs_subcommand_the_readme_names_exists():
    named = {m for span in code(README) for m in re.findall(r"(?:^|[\s(])qs ([a-z][a-z-]*)", span)}
    assert named, "the README names no qs subcommand"
    assert named <= subcommands(), named - subcommands()


def test_every_config_key_the_readme_names_exists():
    tops = {k for k, _ in settings.schema_keys() if "." not in k}
    spans = [s.strip().split(": ")[0] for s in code(README)]  # `register.method: auto` names register.method
    dotted = {s for s in spans if re.fullmatch(r"[a-z_]+(\.[a-z_*]+)+", s) and s.split(".")[0] in tops}
    # settings written as YAML in the README's code blocks
    blocks = re.findall(r"^```yaml\n(.*?)^```", README, re.S | re.M)
    for block in blocks:
        dotted |= set(yaml_keys(yaml.safe_load(block)))
    assert dotted, "the README names no config key"
    unknown = {k for k in dotted if not is_key(k)}
    assert not unknown, unknown


def test_every_snakemake_target_and_file_the_readme_names_exists():
    targets, files = set(), set()
    for span in code(README):
        line = span.split("#")[0].strip()
        if not line.startswith("snakemake"):
            continue
        words = shlex.split(line)[1:]
        for k, word in enumerate(words):
            if word.startswith("-"):
                continue
            if k and words[k - 1] in VALUED:
                if words[k - 1] in ("--configfile", "--profile", "--snakefile"):
                    files.add(word)
                continue
            targets.add(word)
    assert files, "the README names no config file or profile"
    assert not {f for f in files if not (ROOT / f).exists()}, files
    assert targets <= rules(), targets - rules()


def test_config_readme_lists_every_schema_key_and_its_default():
    text = (ROOT / "config" / "README.md").read_text()
    missing = []
    for key, node in settings.schema_keys():
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{key}` |")), None)
        if row is None or f"`{settings.shown_default(node)}`".replace("|", "\\|") not in row:
            missing.append(key)
    assert not missing, f"{missing}: regenerate with python -m qs.settings config/README.md"


def test_the_generated_reference_is_current(tmp_path):
    copy_ = tmp_path / "README.md"
    copy_.write_text((ROOT / "config" / "README.md").read_text())
    settings.write_reference(copy_)
    assert copy_.read_text() == (ROOT / "config" / "README.md").read_text(), \
        "config/README.md is stale: python -m qs.settings config/README.md"


def test_docs_cli_documents_every_subcommand():
    text = (ROOT / "docs" / "cli.md").read_text()
    documented = set(re.findall(r"^### `qs ([a-z-]+)`", text, re.M))
    assert documented == subcommands(), documented ^ subcommands()


def test_docs_index_links_every_document():
    index = (ROOT / "docs" / "README.md").read_text()
    for doc in (ROOT / "docs").glob("*.md"):
        if doc.name != "README.md":
            assert f"({doc.name})" in index, doc.name


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_the_top_level_config_is_valid_with_each_preset(preset):
    user = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert user["preset"] == "cpu"
    user["preset"] = preset
    cfg = copy.deepcopy(settings.run_config(user, ROOT / "config" / "presets", ROOT / "config" / "demo.yaml"))
    validate(cfg, SCHEMA)
    assert cfg["preset"] == preset and cfg["cohort"]["source"] == "sheet"
    assert not [k for k in yaml_keys(user) if not is_key(k)]
