"""The threat-model map across the labs: STRIDE, MITRE ATLAS and the OWASP ML Security Top 10 ->
the lab that demonstrates the attack -> the control -> the measured result.

Each lab declares its rows in targets.toml (`[[labs.<id>.threats]]`: stride, atlas, owasp, attack,
control, metric); the metric is one the lab measures, so the map shows that metric's targets and,
where `results/<lab>.json` exists, the value measured on this machine.
"""
from __future__ import annotations

import json
import re

from . import targets

STRIDE = ("Spoofing", "Tampering", "Repudiation", "Information disclosure", "Denial of service",
          "Elevation of privilege")
# OWASP Machine Learning Security Top 10 (2023).
OWASP = {"ML01": "Input Manipulation Attack", "ML02": "Data Poisoning Attack", "ML03": "Model Inversion Attack",
         "ML04": "Membership Inference Attack", "ML05": "Model Theft", "ML06": "AI Supply Chain Attacks",
         "ML07": "Transfer Learning Attack", "ML08": "Model Skewing", "ML09": "Output Integrity Attack",
         "ML10": "Model Poisoning"}
# Names of the MITRE ATLAS techniques the labs use (a new id of the right form is accepted and shown bare).
ATLAS = {"AML.T0005": "Create Proxy AI Model", "AML.T0010": "AI Supply Chain Compromise",
         "AML.T0010.003": "AI Supply Chain Compromise: Model", "AML.T0011": "User Execution",
         "AML.T0011.000": "User Execution: Unsafe AI Artifacts", "AML.T0012": "Valid Accounts",
         "AML.T0015": "Evade AI Model", "AML.T0018": "Manipulate AI Model",
         "AML.T0018.000": "Manipulate AI Model: Poison AI Model", "AML.T0019": "Publish Poisoned Datasets",
         "AML.T0020": "Poison Training Data", "AML.T0024": "Exfiltration via AI Inference API",
         "AML.T0024.000": "Exfiltration via AI Inference API: Infer Training Data Membership",
         "AML.T0024.001": "Exfiltration via AI Inference API: Invert AI Model",
         "AML.T0024.002": "Exfiltration via AI Inference API: Extract AI Model",
         "AML.T0029": "Denial of AI Service", "AML.T0034": "Cost Harvesting", "AML.T0040": "AI Model Inference API Access",
         "AML.T0043": "Craft Adversarial Data", "AML.T0043.000": "Craft Adversarial Data: White-Box Optimization",
         "AML.T0043.001": "Craft Adversarial Data: Black-Box Optimization"}
ATLAS_ID = re.compile(r"^AML\.T\d{4}(\.\d{3})?$")
OWASP_ID = re.compile(r"^ML(0[1-9]|10)$")
FIELDS = ("stride", "atlas", "owasp", "attack", "control", "metric", "measured")  # measured: optional, the seeds' values


def problems(lab, entry: dict) -> list[str]:
    """What is wrong with a lab's declared rows (nothing when it declares none)."""
    found = []
    metrics = {m for profile in entry.get("targets", {}).values() for m in profile} | set(entry.get("reported", {}))
    for n, row in enumerate(lab.threats, start=1):
        where = f"[[labs.{lab.id}.threats]] row {n}"
        unknown = set(row) - set(FIELDS)
        if unknown:
            found.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; the keys are {', '.join(FIELDS)}")
        for key in ("stride", "attack", "control") + (() if uncovered(row) else ("metric",)):
            if not isinstance(row.get(key), str) or not row.get(key, "").strip():
                found.append(f"{where}: needs {key} (text)" + (" (or control = \"not covered: ...\" for a threat "
                                                              "the lab names but does not test)" if key == "metric" else ""))
        if row.get("stride") and row["stride"] not in STRIDE:
            found.append(f"{where}: stride {row['stride']!r} is not one of {', '.join(STRIDE)}")
        atlas = row.get("atlas", [])
        if not isinstance(atlas, list):
            found.append(f"{where}: atlas is a list of technique ids, e.g. [\"AML.T0043\"]")
        else:
            for technique in atlas:
                if not ATLAS_ID.match(str(technique)):
                    found.append(f"{where}: {technique!r} is not a MITRE ATLAS technique id (AML.Tdddd or AML.Tdddd.ddd)")
        if row.get("owasp") and not OWASP_ID.match(str(row["owasp"])):
            found.append(f"{where}: owasp {row['owasp']!r} is not an OWASP ML Top 10 id (ML01 to ML10)")
        if "measured" in row and not isinstance(row["measured"], str):
            found.append(f"{where}: measured is text, e.g. \"0.69 / 0.72 / 0.74 on seeds 0 / 1 / 2 (quick)\"")
        if row.get("metric") and row["metric"] not in metrics:
            found.append(f"{where}: metric {row['metric']!r} is neither a target nor a reported metric of {lab.id}")
    return found


def uncovered(row: dict) -> bool:
    """A row for a threat the lab names but no control of it tests (its control says "not covered ...")."""
    return str(row.get("control", "")).strip().lower().startswith("not covered")


def target_text(entry: dict, metric: str) -> str:
    """`>= 0.62 (quick), >= 0.85 (full)`, or `reported` for a metric without targets."""
    parts = []
    for profile, table in entry.get("targets", {}).items():
        if metric in table:
            spec = {k: v for k, v in table[metric].items() if k in ("min", "max")}
            parts.append(f"{targets.Target(metric=metric, **spec).describe()} ({profile})")
    return ", ".join(parts) or "reported, no target"


def measured(lab_id: str, metric: str) -> tuple[float, str] | None:
    """(value, profile) of a metric in this machine's results/<lab>.json, if the lab has been run."""
    path = targets.results_dir() / f"{lab_id}.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = result.get("metrics", {}).get(metric)
    return (value, result.get("profile", "?")) if isinstance(value, (int, float)) else None


def rows(all_labs) -> list[tuple]:
    """(stride, atlas, owasp, attack, lab, control, metric, description, targets) in STRIDE order."""
    catalogue = targets.catalogue()
    found = []
    for lab in all_labs:
        entry = catalogue[lab.id]
        for row in lab.threats:
            metric = row.get("metric", "")
            if uncovered(row) and not metric:
                found.append((row["stride"], list(row.get("atlas", [])), row.get("owasp", ""), row["attack"], lab,
                              row["control"], "", "no measured test", "not covered"))
                continue
            description = ""
            for table in entry.get("targets", {}).values():
                description = description or table.get(metric, {}).get("description", "")
            description = description or entry.get("reported", {}).get(metric, "")
            bounds = target_text(entry, metric)
            if row.get("measured"):
                bounds += f"; measured {row['measured']}"
            found.append((row["stride"], list(row.get("atlas", [])), row.get("owasp", ""), row["attack"], lab,
                          row["control"], metric, description, bounds))
    order = {name: i for i, name in enumerate(STRIDE)}
    return sorted(found, key=lambda r: (order.get(r[0], 99), r[4].sort_key()))


def _atlas(ids: list[str]) -> str:
    return "; ".join(f"{t} {ATLAS[t]}" if t in ATLAS else t for t in ids) or "-"


def _owasp(owasp: str) -> str:
    return f"{owasp} {OWASP[owasp]}" if owasp in OWASP else (owasp or "-")


def page(all_labs) -> str:
    out = ["# Threat-model map: STRIDE, MITRE ATLAS, OWASP ML Top 10 -> lab -> control -> measured result", "",
           "\"Walk me through threat-modelling an ML system\": go through STRIDE for each asset (the model, the",
           "training data, the keys, the decisions), name the attacker's technique (MITRE ATLAS) and the risk",
           "(OWASP Machine Learning Security Top 10), then the control and the number that shows it works.",
           "Each row below is backed by a lab that runs the attack and measures the control; the result column",
           "gives the metric and the target every run of the solution meets (`labkit interview --map` adds the",
           "values measured on your machine). Back to the [start page](START.md); terms in the [glossary](GLOSSARY.md).",
           "", "| STRIDE | MITRE ATLAS | OWASP ML | attack | lab | control | measured result |",
           "|---|---|---|---|---|---|---|"]
    for stride, atlas, owasp, attack, lab, control, metric, description, bounds in rows(all_labs):
        out.append(f"| {stride} | {_atlas(atlas)} | {_owasp(owasp)} | {attack} | [{lab.number}]({lab.notebook}) | "
                   f"{control} | " + (f"`{metric}` {bounds}: {description} |" if metric else "**not covered** |"))
    missing = [lab for lab in all_labs if not lab.threats]
    if missing:
        out += ["", "Not mapped yet (no threat rows declared): " + ", ".join(f"[{lab.number}]({lab.notebook})" for lab in missing) + "."]
    out += ["", "*Generated from the `[[labs.<id>.threats]]` rows in `labkit/targets.toml` (`labkit course`).*", ""]
    return "\n".join(out)


def terminal_rows(all_labs) -> list[tuple]:
    """The map for a terminal, with the value measured on this machine where there is one."""
    found = []
    for stride, atlas, owasp, attack, lab, control, metric, _, bounds in rows(all_labs):
        value = measured(lab.id, metric) if metric else None
        shown = f"{value[0]:.4g} ({value[1]})" if value else ("not run here" if metric else "not covered")
        found.append((stride, ", ".join(atlas) or "-", owasp or "-", attack, lab.number, control, metric, bounds, shown))
    return found
