import json

import pytest

import labkit
from labkit import targets

TOY = """
[labs.toy_lab]
title = "Toy"
level = "beginner"
notebook = "toy_lab.ipynb"
minutes = { quick = 1, full = 2 }
[labs.toy_lab.targets.quick]
accuracy = { min = 0.9 }
attack_success = { max = 0.1 }
band = { min = 0.2, max = 0.4 }
"""


@pytest.fixture
def toy_targets(tmp_path, monkeypatch):
    path = tmp_path / "targets.toml"
    path.write_text(TOY)
    monkeypatch.setenv("LABKIT_TARGETS", str(path))
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    return path


def test_report_passes_prints_table_and_writes_results(toy_targets, tmp_path, capsys):
    result = labkit.report("toy_lab", {"accuracy": 0.95, "attack_success": 0.05, "band": 0.3, "extra": 12})
    out = capsys.readouterr().out
    assert "accuracy" in out and "PASS" in out and "MISS" not in out and "extra" in out
    saved = json.loads((tmp_path / "results" / "toy_lab.json").read_text())
    assert saved["passed"] and saved["profile"] == "quick" and saved["metrics"]["accuracy"] == 0.95
    assert {"python", "numpy", "torch"} <= set(saved["versions"]) and saved["wall_time_s"] >= 0
    assert saved["device"]
    assert result["passed"]


@pytest.mark.parametrize("metrics, culprit", [
    ({"accuracy": 0.85, "attack_success": 0.05, "band": 0.3}, "accuracy = 0.8500 (target >= 0.9)"),
    ({"accuracy": 0.95, "attack_success": 0.5, "band": 0.3}, "attack_success = 0.5000 (target <= 0.1)"),
    ({"accuracy": 0.95, "attack_success": 0.05, "band": 0.5}, "band = 0.5000 (target 0.2 to 0.4)"),
    ({"accuracy": 0.95, "attack_success": 0.05}, "band = not reported"),
    ({"accuracy": float("nan"), "attack_success": 0.05, "band": 0.3}, "accuracy = nan"),
])
def test_a_missed_target_raises_naming_the_metric(toy_targets, tmp_path, metrics, culprit):
    with pytest.raises(labkit.TargetMissed) as err:
        labkit.report("toy_lab", metrics)
    assert culprit in str(err.value)
    saved = json.loads((tmp_path / "results" / "toy_lab.json").read_text())
    assert not saved["passed"] and saved["missed"]


def test_unknown_lab_lists_the_known_ones(toy_targets):
    with pytest.raises(targets.UnknownLab) as err:
        labkit.report("nope", {})
    assert "nope" in str(err.value) and "toy_lab" in str(err.value)


def test_profile_without_targets_is_an_error(toy_targets, monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "full")
    with pytest.raises(targets.UnknownLab, match="no targets for profile 'full'"):
        labkit.report("toy_lab", {"accuracy": 1.0})


def test_shipped_catalogue_is_complete():
    labs = targets.catalogue()
    assert labs, "targets.toml lists no lab"
    for lab_id, entry in labs.items():
        for key in ("title", "level", "notebook", "minutes"):
            assert key in entry, f"{lab_id} lacks {key}"
        assert entry["level"] in ("beginner", "intermediate", "advanced")
        for profile in ("quick", "full"):
            specs = targets.targets(lab_id, profile)
            assert specs and all(t.min is not None or t.max is not None for t in specs)
