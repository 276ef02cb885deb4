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


# --- every shipped target can fail, and can be met -------------------------------------------------
# The range each metric can take, from its name (first matching rule wins). A target whose bound sits
# at or beyond the edge of that range cannot fail (`min = 0` on a metric >= 0, `max = 1` on a share)
# or cannot be met; both hide regressions. A new metric that no rule covers fails the test: add a rule.
INF = float("inf")
DOMAINS = [
    (r"_rel_diff$|_max_diff$", (0.0, INF)),
    (r"drop|gain|closer_to_chance|fidelity_loss", (-1.0, 1.0)),               # differences of two shares
    (r"^attacks_blocked_", (0.0, 7.0)),                                        # red-team attacks, of 7
    (r"accuracy|precision|recall|fidelity|agreement|auc|_rate$|success|share", (0.0, 1.0)),
    (r"_(accepted|quarantined|caught|refused|intact|verified|exact|quiet|ignored|false_positive|served)$", (0.0, 1.0)),
    (r"p_value$", (0.0, 1.0)),
    (r"_updates_seen_", (1.0, INF)),                                           # model vectors a server received
    (r"epsilon|understatement|speedup|spread|ratio|_after$|_ms$|false_flags|_flagged$|keys_in_", (0.0, INF)),
]
# Metrics that do not depend on anything the lab trains or the learner writes (constants of an accountant
# or a formula): a target on them cannot fail, so they may only be reported (`[labs.<id>.reported]`).
CONSTANTS = {"opacus_vs_tf_rdp_rel_diff"}


def domain(metric: str):
    import re

    for pattern, bounds in DOMAINS:
        if re.search(pattern, metric):
            return bounds
    return None


def shipped_targets():
    for lab_id, entry in targets.catalogue().items():
        for profile in entry.get("targets", {}):
            for target in targets.targets(lab_id, profile):
                yield lab_id, profile, target


def test_every_target_bound_lies_inside_its_metric_range():
    problems = []
    for lab_id, profile, t in shipped_targets():
        where = f"{lab_id} [{profile}] {t.metric} {t.describe()}"
        bounds = domain(t.metric)
        if bounds is None:
            problems.append(f"{where}: no range known for this metric; add a rule to DOMAINS in tests/test_targets.py")
            continue
        lo, hi = bounds
        if t.min is not None and t.max is not None and t.min > t.max:
            problems.append(f"{where}: min above max, cannot be met")
        if t.min is not None and t.min <= lo:
            problems.append(f"{where}: min {t.min:g} at or below the lowest possible value {lo:g}, cannot fail")
        if t.max is not None and t.max >= hi:
            problems.append(f"{where}: max {t.max:g} at or above the highest possible value {hi:g}, cannot fail")
        if t.min is not None and t.min > hi or t.max is not None and t.max < lo:
            problems.append(f"{where}: outside the possible range [{lo:g}, {hi:g}], cannot be met")
    assert not problems, "\n".join(problems)


def test_constant_metrics_are_reported_not_targets():
    targeted = [f"{lab_id} [{profile}] {t.metric}" for lab_id, profile, t in shipped_targets() if t.metric in CONSTANTS]
    assert not targeted, ("these metrics are constants of the method, not results, so their target cannot fail: "
                          "move them to [labs.<id>.reported]: " + ", ".join(targeted))


def test_reported_metrics_are_described_and_not_also_targets():
    for lab_id, entry in targets.catalogue().items():
        reported = entry.get("reported", {})
        assert isinstance(reported, dict), f"{lab_id}: [labs.{lab_id}.reported] maps metric names to descriptions"
        targeted = {t.metric for profile in entry.get("targets", {}) for t in targets.targets(lab_id, profile)}
        for metric, description in reported.items():
            assert isinstance(description, str) and description, f"{lab_id}: reported metric {metric} needs a description"
            assert metric not in targeted, f"{lab_id}: {metric} is both reported-only and a target"


@pytest.mark.parametrize("spec, problem", [
    ("recall = { min = 0.0 }", "cannot fail"),
    ("accuracy = { max = 1.0 }", "cannot fail"),
    ("dp_epsilon = { max = 3.0 }\nspeedup = { min = 0 }", "cannot fail"),
    ("accuracy = { min = 1.2 }", "cannot be met"),
    ("accuracy = { min = 0.6, max = 0.4 }", "min above max"),
    ("mystery_metric = { min = 3 }", "no range known"),
])
def test_range_check_catches_bad_targets(tmp_path, monkeypatch, spec, problem):
    path = tmp_path / "targets.toml"
    path.write_text(TOY.replace('accuracy = { min = 0.9 }\nattack_success = { max = 0.1 }\nband = { min = 0.2, max = 0.4 }',
                                spec))
    monkeypatch.setenv("LABKIT_TARGETS", str(path))
    with pytest.raises(AssertionError, match=problem):
        test_every_target_bound_lies_inside_its_metric_range()


def test_range_check_accepts_good_targets(tmp_path, monkeypatch):
    path = tmp_path / "targets.toml"
    path.write_text(TOY.replace("band = { min = 0.2, max = 0.4 }", "dp_epsilon = { max = 3.0 }\nfgsm_max_diff = { max = 0.01 }")
                    + '[labs.toy_lab.reported]\nopacus_vs_tf_rdp_rel_diff = "a constant of the accountants"\n')
    monkeypatch.setenv("LABKIT_TARGETS", str(path))
    test_every_target_bound_lies_inside_its_metric_range()
    test_constant_metrics_are_reported_not_targets()
    test_reported_metrics_are_described_and_not_also_targets()


def test_constant_metric_as_a_target_is_flagged(tmp_path, monkeypatch):
    path = tmp_path / "targets.toml"
    path.write_text(TOY + "opacus_vs_tf_rdp_rel_diff = { max = 0.02 }\n")
    monkeypatch.setenv("LABKIT_TARGETS", str(path))
    with pytest.raises(AssertionError, match="constants of the method"):
        test_constant_metrics_are_reported_not_targets()
    path.write_text(TOY.replace("[labs.toy_lab.targets.quick]", '[labs.toy_lab.reported]\naccuracy = "x"\n'
                                                                 "[labs.toy_lab.targets.quick]"))
    with pytest.raises(AssertionError, match="both reported-only and a target"):
        test_reported_metrics_are_described_and_not_also_targets()
