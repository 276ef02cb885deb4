"""The course around the labs, generated from the catalogue: start page, README catalogue, `labkit list`,
one source for each lab's time, the glossary, dead links, quiet JupyterLab, threat-model declarations.
Every test reads the catalogue, so a lab added to targets.toml is covered without editing this file."""
import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest

from labkit import cli, course, targets, threats, workspace

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = targets.catalogue()


def test_course_pages_and_the_readme_catalogue_are_generated_from_the_current_catalogue():
    stale = course.write(check=True, root=ROOT)
    assert not stale, "stale; run `labkit course`: " + ", ".join(stale)


def test_what_the_labs_declare_is_valid_and_what_is_missing_is_only_a_warning():
    errors, missing = course.problems()
    assert not errors, "\n".join(errors)
    for line in missing:  # a lab may land before its course data: say so, never fail for it
        warnings.warn(line)


@pytest.mark.parametrize("lab_id", list(CATALOGUE))
def test_each_lab_is_on_the_start_page_the_readme_and_labkit_list(lab_id, capsys):
    entry = CATALOGUE[lab_id]
    start = (ROOT / "labs" / "START.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert f"]({entry['notebook']})" in start
    block = readme.split(course.README_BEGIN)[1].split(course.README_END)[0]
    assert f"](labs/{entry['notebook']})" in block and "solutions/" in block  # learner version linked
    assert f"](solutions/{entry['notebook']})" not in readme  # no spoiler link
    for profile in course.PROFILES:  # one source for the time: targets.toml `minutes`
        assert course.format_minutes(entry["minutes"][profile]) in start
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(lab_id + " "))
    assert course.format_minutes(entry["minutes"]["quick"]) in line and course.format_minutes(entry["minutes"]["full"]) in line


@pytest.mark.parametrize("lab_id", list(CATALOGUE))
def test_the_notebook_states_the_time_targets_toml_gives(lab_id):
    entry = CATALOGUE[lab_id]
    stated = course.notebook_minutes(course.intro(ROOT / "solutions" / entry["notebook"]))
    wanted = {p: float(entry["minutes"][p]) for p in course.PROFILES}
    assert stated == wanted, (f"{entry['notebook']}: its **Time:** paragraph must say 'quick profile "
                              f"{course.format_minutes(wanted['quick'])}' and 'full profile "
                              f"{course.format_minutes(wanted['full'])}' (targets.toml minutes)")


@pytest.mark.parametrize("text, found", [
    ("**Time:** quick profile about 3 minutes on a CPU; full profile about 30 minutes on one GPU.", {"quick": 3, "full": 30}),
    ("**Time:** quick profile (MNIST) about 2 minutes on a\nCPU; full\nprofile (CIFAR-10) about 2 hours.", {"quick": 2, "full": 120}),
    ("**Time:** quick profile 1 to 3 minutes; full profile about 1 minute", {"full": 1}),  # a range is not a time
    ("No time here. The quick profile about 9 minutes.", {}),
])
def test_the_time_paragraph_is_read_the_one_way_it_is_written(text, found):
    assert course.notebook_minutes(text) == found
    assert course.format_minutes(1) == "about 1 minute" and course.format_minutes(90) == "about 1.5 hours"


def test_free_numbers_say_coming_and_a_new_lab_takes_its_number():
    toy = {lab_id: CATALOGUE[lab_id] for lab_id in list(CATALOGUE)[:1]}
    toy["02_new_lab"] = {"title": "A new lab", "level": "advanced", "notebook": "02_new_lab.ipynb",
                         "minutes": {"quick": 2, "full": 5}}
    labs = course.labs(toy)
    rows = course.catalogue_rows(labs)
    last = course.settings()["numbers"]["last"]
    for n in range(1, last + 1):
        assert any(row.startswith((f"| {n:02d} ", f"| [{n:02d} ")) for row in rows), f"number {n:02d} missing"
    assert any("[02 · A new lab](02_new_lab.ipynb)" in row for row in rows)
    assert not any(row.startswith("| 02 ·") for row in rows)  # taken: no longer coming
    assert any(row.startswith(f"| {last:02d} ·") and "*coming*" in row for row in rows)
    page = course.start_page(labs)
    assert "Day 4" in page and "[02](02_new_lab.ipynb) A new lab" in page  # advanced: day 4 by default


def test_no_dead_link_in_labs_or_in_a_filled_workspace(tmp_path):
    assert not course.dead_links(ROOT / "labs")
    ws = tmp_path / "ws"
    workspace.fill(ROOT / "labs", ws)
    assert set(workspace.install_pages(ROOT / "labs", ws)) == set(course.PAGES)
    assert not course.dead_links(ws)
    assert workspace.install_pages(ROOT / "labs", ws) == []  # nothing to refresh
    (ws / "START.md").write_text("old page")
    assert workspace.install_pages(ROOT / "labs", ws) == ["START.md"]  # the kit's page, refreshed


def test_dead_links_are_found(tmp_path):
    (tmp_path / "START.md").write_text("[a lab](01_x.ipynb) [web](https://example.org) [here](#top)")
    assert course.dead_links(tmp_path) == ["START.md: [a lab](01_x.ipynb)"]


def test_the_glossary_defines_the_terms_the_issue_names_and_the_labs_link_it():
    page = (ROOT / "labs" / "GLOSSARY.md").read_text()
    for term in ("epsilon and delta", "RDP, PLD, PRV", "adjacency", "L-infinity and L2", "PGD", "catastrophic overfitting",
                 "excess kurtosis", "Mahalanobis distance", "Kolmogorov-Smirnov", "Clopper-Pearson"):
        assert term in page, term
    sections = page.split("\n## ")[1:]
    assert all("Used in:" in s for s in sections if s.startswith(("Clopper", "PGD", "epsilon"))), "usage not found"


def test_threat_declarations_are_validated():
    entry = {"targets": {"quick": {"acc": {"min": 0.5}}}, "reported": {"eps": "an epsilon"}}
    lab = course.Lab(id="04_toy", title="t", level="beginner", topic="", notebook="04_toy.ipynb", minutes={}, threats=[
        {"stride": "Tampering", "atlas": ["AML.T0043"], "owasp": "ML01", "attack": "a", "control": "c", "metric": "acc"},
        {"stride": "Eavesdropping", "atlas": ["T0043"], "owasp": "ML11", "attack": "a", "control": "c", "metric": "nope"},
        {"stride": "Spoofing", "atlas": [], "attack": "a", "control": "", "metric": "eps", "mitre": "x"},
    ])
    found = "\n".join(threats.problems(lab, entry))
    assert "row 1" not in found
    for expected in ("'Eavesdropping' is not one of", "'T0043' is not a MITRE ATLAS", "'ML11' is not an OWASP",
                     "'nope' is neither a target nor a reported", "row 3: needs control", "unknown key(s) mitre"):
        assert expected in found, expected


def test_every_declared_threat_row_is_on_the_map():
    page = (ROOT / "labs" / "THREATS.md").read_text()
    for lab_id, entry in CATALOGUE.items():
        for row in entry.get("threats", []):
            shown = f"`{row['metric']}`" if row.get("metric") else "**not covered**"
            assert shown in page and row["attack"] in page, (lab_id, row.get("metric"), row["attack"])


def test_the_map_shows_a_result_measured_here(tmp_path, monkeypatch):
    lab_id, entry = next((k, v) for k, v in CATALOGUE.items() if v.get("threats"))
    metric = entry["threats"][0]["metric"]
    monkeypatch.setenv("LABKIT_RESULTS", str(tmp_path))
    (tmp_path / f"{lab_id}.json").write_text(json.dumps({"profile": "quick", "metrics": {metric: 0.4321}}))
    rows = [r for r in threats.terminal_rows(course.labs()) if r[6] == metric]
    assert rows and rows[0][-1] == "0.4321 (quick)"


# ---- a quiet JupyterLab ------------------------------------------------------------------------

def test_jupyter_config_turns_off_news_and_update_checks_and_opens_the_start_page(tmp_path):
    import jupyterlab_server.settings_utils as settings_utils

    server = tmp_path / "etc" / "jupyter" / "jupyter_server_config.json"
    server.parent.mkdir(parents=True)
    server.write_text(json.dumps({"ServerApp": {"port": 8899}}))  # someone's own setting survives
    written = workspace.configure_jupyter(tmp_path)
    assert json.loads(server.read_text())["ServerApp"] == {"port": 8899}
    schemas = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[1] / ".venv")) / "share/jupyter/lab/schemas"
    if not schemas.is_dir():
        import sys
        schemas = Path(sys.prefix) / "share/jupyter/lab/schemas"
    app_settings = written[1].parent
    notification, _ = settings_utils.get_settings(str(app_settings), str(schemas), str(tmp_path / "user"),
                                                  schema_name="@jupyterlab/apputils-extension:notification")
    props = notification["schema"]["properties"]
    assert props["fetchNews"]["default"] == "false" and props["checkForUpdates"]["default"] is False
    viewers, _ = settings_utils.get_settings(str(app_settings), str(schemas), str(tmp_path / "user"),
                                             schema_name="@jupyterlab/docmanager-extension:plugin")
    assert viewers["schema"]["properties"]["defaultViewers"]["default"]["markdown"] == "Markdown Preview"
    # JupyterLab itself reads the server settings: no news feed, no update check, the start page first
    import sys
    shown = subprocess.run([str(Path(sys.executable).parent / "jupyter"), "lab", "--show-config"], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "JUPYTER_CONFIG_DIR": str(server.parent)}).stdout
    assert ".news_url = None" in shown and "NeverCheckForUpdate" in shown and "/lab/tree/START.md" in shown


def test_make_lab_writes_the_jupyter_config_and_the_kernel_is_the_kits():
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "labkit jupyter-config" in out
    for path in [ROOT / "solutions" / e["notebook"] for e in CATALOGUE.values()]:
        spec = json.loads(path.read_text())["metadata"]["kernelspec"]
        assert spec["name"] == "python3", f"{path.name}: the kit's kernel is 'python3' (Python 3 (labkit))"
