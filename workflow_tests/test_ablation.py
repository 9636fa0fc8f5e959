"""The paper's variant table (qs.report.ablation, `qs ablation`): variants from the config, their paper rows,
and the table's known answers on the report tests' synthetic results tree (conftest.tree: LDDMM's
displacement |d| = 2 mm; `predict` is 0.5 mm off on one pair and 1.5 mm on the other, `predict+correct`
0.25 mm on both, `predict-mc` folds on the first pair and is 0.1 mm off on the second)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

import qs.cli
from qs.io import QsInputError
from qs.report.ablation import (ABLATION_COLUMNS, model_key, paper_row, patch_key, variant_name, variants,
                                write_ablation)
from qs.report.pair import evaluate_pair

CONFIG = {"train": {"patch": 15, "dropout": 0.2}}


def _variants(*given, **train):
    return variants({"train": {**CONFIG["train"], **train}, "ablation": {"variants": list(given)}})


def test_variants_fill_defaults_and_share_networks_and_patches():
    specs = _variants({"field": "momentum"}, {"field": "momentum", "correction": True},
                      {"field": "momentum", "samples": 50}, {"field": "velocity", "stride": 5, "epochs": 40})
    assert list(specs) == ["momentum-stride14-10epochs", "momentum-stride14-10epochs-corrected",
                           "momentum-stride14-10epochs-mc50", "velocity-stride5-40epochs"]
    assert specs["momentum-stride14-10epochs"] == {"field": "momentum", "stride": 14, "epochs": 10, "samples": 1,
                                                   "correction": False}
    assert {model_key(v) for v in specs.values()} == {"momentum-stride14-10epochs", "velocity-stride5-40epochs"}
    assert {patch_key(v) for v in specs.values()} == {"momentum-stride14", "velocity-stride5"}
    assert all(variant_name(v) == name for name, v in specs.items())


@pytest.mark.parametrize("given, train, message", [
    ({"stride": 14}, {}, r"ablation.variants\[0\]: a variant is a mapping with at least a field"),
    ({"field": "momentum", "strides": 5}, {}, r"unknown keys \['strides'\]"),
    ({"field": "displacement"}, {}, "field must be one of"),
    ({"field": "momentum", "stride": 16}, {}, "stride 16 is larger than the patch size 15"),
    ({"field": "momentum", "epochs": 0}, {}, "epochs must be a positive integer"),
    ({"field": "momentum", "correction": "yes"}, {}, "correction must be true or false"),
    ({"field": "deformation", "correction": True}, {}, "a deformation has no correction network"),
    ({"field": "momentum", "samples": 10}, {"dropout": 0.0}, "samples 10 needs MC dropout"),
])
def test_bad_variants_are_refused_naming_the_variant(given, train, message):
    with pytest.raises(QsInputError, match=message):
        _variants(given, **train)
    with pytest.raises(QsInputError, match=r"ablation.variants\[1\]: the variant momentum-stride14-10epochs is listed twice"):
        _variants({"field": "momentum"}, {"field": "momentum", "stride": 14, "epochs": 10})


def test_paper_rows():
    row = lambda **v: paper_row({"stride": 14, "epochs": 10, "samples": 1, "correction": False, **v})  # noqa: E731
    assert row(field="momentum") == "D, momentum, stride 14"
    assert row(field="momentum", stride=5) == "D, momentum, stride 5"
    assert row(field="momentum", epochs=40) == "D, momentum, stride 14, 40 epochs"
    assert row(field="momentum", correction=True) == "D, momentum, stride 14 + correction"
    assert row(field="momentum", samples=50) == "P, momentum, stride 14, 50 samples"
    assert row(field="deformation", stride=5) == "D, deformation, stride 5"
    assert row(field="velocity") == "D, velocity, stride 14"
    assert row(field="velocity", correction=True) is None and row(field="momentum", stride=7) is None


@pytest.fixture(scope="module")
def ablation(tree, tmp_path_factory):
    """The tree's method folders evaluated as three variants, and the ablation written from them."""
    out = tmp_path_factory.mktemp("ablation")
    as_variant = {"predict": "momentum-stride14-10epochs", "predict-correct": "momentum-stride14-10epochs-corrected",
                  "predict-mc": "deformation-stride14-10epochs"}
    pair_dirs = []
    for pair, (lddmm, dirs) in tree["dirs"].items():
        pair_dirs.append(out / "evaluate" / pair)
        evaluate_pair(pair, pair_dirs[-1], lddmm_dir=lddmm, method_dirs={as_variant[m]: dirs[m] for m in as_variant},
                      target_labels=tree["root"] / "pre/target_labels.nii.gz",
                      moving_labels=tree["root"] / "pre/moving_labels.nii.gz")
    specs = _variants({"field": "momentum"}, {"field": "momentum", "correction": True}, {"field": "deformation"})
    models = tree["root"] / "models"
    losses = {"momentum-stride14-10epochs": [models / "prediction/loss.tsv"],
              "momentum-stride14-10epochs-corrected": [models / "prediction/loss.tsv", models / "correction/loss.tsv"],
              "deformation-stride14-10epochs": [models / "prediction/loss.tsv"]}
    paths = write_ablation(pair_dirs, specs, losses, out / "report")
    return {"paths": paths, "pairs": pair_dirs, "specs": specs, "losses": losses, "out": out,
            "table": pd.read_csv(paths["tsv"], sep="\t", keep_default_na=False, na_values=["NaN"]).set_index("variant")}


def test_ablation_table_known_answers(ablation):
    t = ablation["table"]
    assert list(t.reset_index().columns) == ABLATION_COLUMNS
    assert list(t.index) == ["affine", "momentum-stride14-10epochs", "momentum-stride14-10epochs-corrected",
                             "deformation-stride14-10epochs"]
    assert t.loc["affine", "p50"] == pytest.approx(2.0, abs=1e-4) and t.loc["affine", "paper_row"] == "affine only"
    assert math.isnan(t.loc["affine", "detj_pos_pct"])
    m = t.loc["momentum-stride14-10epochs"]
    assert (m["p25"], m["p75"]) == (pytest.approx(0.5, abs=1e-4), pytest.approx(1.5, abs=1e-4))
    assert m["detj_pos_pct"] == 100 and m["network"] == "D" and m["correction"] == "no"
    assert m["paper_row"] == "D, momentum, stride 14" and m["paper_p50"] == pytest.approx(0.1359)
    c = t.loc["momentum-stride14-10epochs-corrected"]
    assert c["p50"] == pytest.approx(0.25, abs=1e-4) and c["correction"] == "yes"
    assert c["paper_row"] == "D, momentum, stride 14 + correction"
    d = t.loc["deformation-stride14-10epochs"]
    assert d["detj_pos_pct"] == 50  # folds on one of the two pairs
    assert d["paper_row"] == "D, deformation, stride 14" and d["paper_detj_pos"] == "0%"
    # training: the epochs' seconds of the networks a variant uses (3.0 + 3.1 + 3.0 each); prediction: the median
    assert m["train_s"] == pytest.approx(9.1) and c["train_s"] == pytest.approx(18.2)
    assert m["predict_s"] == pytest.approx(2.0) and c["predict_s"] == pytest.approx(4.0)
    assert (t["pairs"] == 2).all() and 0 < m["target_overlap"] <= 1
    assert ablation["paths"]["png"].stat().st_size > 10_000


def test_qs_ablation_cli(ablation, tmp_path, capsys):
    given = json.dumps([{"field": "momentum"}, {"field": "deformation"}])
    loss = ablation["losses"]["momentum-stride14-10epochs"][0]
    pairs = [str(p) for p in ablation["pairs"]]
    rc = qs.cli.main(["ablation", *pairs, "--variants-json", given, "--loss", f"momentum-stride14-10epochs={loss}",
                      "--out", str(tmp_path)])
    assert rc == 0
    t = pd.read_csv(tmp_path / "ablation.tsv", sep="\t").set_index("variant")
    assert list(t.index) == ["affine", "momentum-stride14-10epochs", "deformation-stride14-10epochs"]
    assert math.isnan(t.loc["deformation-stride14-10epochs", "train_s"])  # no loss.tsv given for it
    for args, message in [
        (["--variants-json", "{not json"], "--variants-json must be a JSON list of variants"),
        (["--variants-json", given, "--loss", f"velocity-stride14-10epochs={loss}"], "--loss must be VARIANT=TSV"),
        (["--variants-json", json.dumps([{"field": "velocity"}])], "no evaluation of the variants ['velocity-"),
    ]:
        rc = qs.cli.main(["ablation", *pairs, *args, "--out", str(tmp_path / "bad")])
        assert rc != 0 and message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
