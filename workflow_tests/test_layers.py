"""The package's layers are a test: import-linter's contracts (pyproject.toml, [tool.importlinter]) hold.

Bottom up: numerics (tensors and arrays in, tensors and arrays out), I/O (NIfTI, ANTs
transforms, model files, the settings table), stages (which join them), and the CLI on
top, which nothing imports. ``qs.lddmm`` loads no file I/O.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import ROOT


def test_import_contracts_hold():
    lint = shutil.which("lint-imports")
    assert lint, "lint-imports is missing: pip install -e '.[test]' installs import-linter"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and " kept" in done.stdout, done.stdout


def test_a_broken_contract_fails(tmp_path):
    """The linter really checks this package: a config forbidding an import qs makes fails."""
    config = tmp_path / "contracts.ini"
    config.write_text("[importlinter]\nroot_package = qs\n\n[importlinter:contract:probe]\nname = probe\n"
                      "type = forbidden\nsource_modules = qs.cli\nforbidden_modules = qs.io\n")
    done = subprocess.run([shutil.which("lint-imports"), "--no-cache", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "BROKEN" in done.stdout, done.stdout


def test_importing_the_lddmm_engine_loads_no_file_io():
    code = ("import sys, qs.lddmm; bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nibabel', 'ants') "
            "or m in ('qs.io', 'qs.transforms', 'qs.model_io', 'qs.cli')); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_is_longer_than_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "qs").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
