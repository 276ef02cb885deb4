"""Lab catalogue and target metrics (`targets.toml`), and the report every lab ends with."""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import env
from .tables import format_table

DEFAULT_TARGETS_FILE = Path(__file__).with_name("targets.toml")


def targets_file() -> Path:
    """targets.toml, or the file in `LABKIT_TARGETS` (an instructor's own targets, or a test's)."""
    return Path(os.environ.get("LABKIT_TARGETS") or DEFAULT_TARGETS_FILE)
# Set when labkit is imported: a lab's wall time runs from its first cell.
_STARTED = time.perf_counter()


class TargetMissed(AssertionError):
    """A lab finished but at least one metric missed its target (so nbval marks it failed)."""


class UnknownLab(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


@dataclass(frozen=True)
class Target:
    metric: str
    min: float | None = None
    max: float | None = None
    description: str = ""

    def passes(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.min is not None and value < self.min:
            return False
        if self.max is not None and value > self.max:
            return False
        return True

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min:g} to {self.max:g}"
        if self.min is not None:
            return f">= {self.min:g}"
        return f"<= {self.max:g}"


def catalogue() -> dict:
    """Every lab's entry from targets.toml, keyed by lab id, in catalogue order."""
    with targets_file().open("rb") as f:
        return tomllib.load(f)["labs"]


def lab(lab_id: str) -> dict:
    labs = catalogue()
    if lab_id not in labs:
        raise UnknownLab(
            f"Unknown lab {lab_id!r}. Known labs: {', '.join(labs)} (run `labkit list`)."
        )
    return labs[lab_id]


def targets(lab_id: str, profile: str | None = None) -> list[Target]:
    profile = profile or env.profile()
    entry = lab(lab_id)
    table = entry.get("targets", {}).get(profile)
    if table is None:
        raise UnknownLab(f"Lab {lab_id!r} has no targets for profile {profile!r} in {targets_file()}.")
    return [Target(metric=name, **spec) for name, spec in table.items()]


def repo_root() -> Path | None:
    """The checkout labkit was installed from (editable install), if there is one."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "solutions").is_dir() else None


def results_dir() -> Path:
    if os.environ.get("LABKIT_RESULTS"):
        return Path(os.environ["LABKIT_RESULTS"])
    root = repo_root()
    return (root if root else Path.cwd()) / "results"


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_result(result: dict) -> str:
    """The report table (metric, target, achieved, pass) of a saved or fresh result."""
    rows = []
    for metric, value in result["metrics"].items():
        target = result["targets"].get(metric, "-")
        verdict = "" if metric not in result["passes"] else ("PASS" if result["passes"][metric] else "MISS")
        rows.append((metric, target, _format_value(value), verdict))
    for metric in result["targets"]:
        if metric not in result["metrics"]:
            rows.append((metric, result["targets"][metric], "missing", "MISS"))
    return format_table(("metric", "target", "achieved", "pass"), rows)


def report(lab_id: str, metrics: dict, profile: str | None = None, notes: dict | None = None) -> dict:
    """Print metric / target / achieved / pass, save results/<lab_id>.json, raise TargetMissed
    naming every metric that missed its target (also one the lab forgot to measure)."""
    profile = profile or env.profile()
    wall_time = time.perf_counter() - _STARTED
    lab_targets = targets(lab_id, profile)
    passes, missed = {}, []
    for target in lab_targets:
        value = metrics.get(target.metric)
        passes[target.metric] = value is not None and target.passes(float(value))
        if not passes[target.metric]:
            shown = "not reported" if value is None else _format_value(value)
            missed.append(f"{target.metric} = {shown} (target {target.describe()})")

    result = {
        "lab": lab_id,
        "profile": profile,
        "device": env.device_name(),
        "wall_time_s": round(wall_time, 1),
        "metrics": {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()},
        "targets": {t.metric: t.describe() for t in lab_targets},
        "passes": passes,
        "passed": not missed,
        "missed": missed,
        "notes": notes or {},
        "versions": env.versions(),
        "platform": f"{platform.system()} {platform.machine()}",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"Report: {lab_id} ({profile} profile, {result['device']}, {wall_time:.0f} s)")
    print(format_result(result))
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{lab_id}.json").write_text(json.dumps(result, indent=2) + "\n")
    if missed:
        raise TargetMissed(f"{lab_id}: {len(missed)} target(s) missed in the {profile} profile: " + "; ".join(missed))
    print(f"All {len(lab_targets)} targets met.")
    return result
