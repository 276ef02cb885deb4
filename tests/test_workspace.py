"""The learner's workspace: filled once from labs/, never overwritten; reset keeps the old copy;
a filled notebook survives `make lab`, `labkit build` and an update of the kit."""
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labkit import cli, notebooks, targets, workspace

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def own_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv(workspace.WORKSPACE_ENV, str(tmp_path / "workspace"))


def _solution(folder: Path, name: str, body: str):
    folder.mkdir(parents=True, exist_ok=True)
    nb = new_notebook(cells=[new_markdown_cell(f"# {name}"),
                             new_code_cell(f"def answer():\n    # BEGIN SOLUTION: {body}\n    return 42\n    # END SOLUTION"),
                             new_code_cell("check.fgsm(answer)")])
    nbformat.write(nb, folder / name)


def _learner_answers(path: Path):
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "def answer():\n    return 41  # my own work"
    nbformat.write(nb, path)


def _kit(tmp_path, monkeypatch) -> Path:
    """A checkout of the kit in tmp_path: solutions/, labs/, and labkit pointed at it."""
    root = tmp_path / "kit"
    _solution(root / "solutions", "01_lab.ipynb", "return the answer")
    monkeypatch.setattr(targets, "repo_root", lambda: root)
    monkeypatch.setattr(notebooks, "repo_root", lambda: root)
    monkeypatch.delenv(workspace.WORKSPACE_ENV)
    return root


def _make_lab_commands() -> list[list[str]]:
    """The labkit commands `make lab` runs (read from `make -n`), without the Jupyter server."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    commands = []
    for line in out.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:  # a continued line of a longer recipe: not a labkit command
            continue
        words = [w for w in words if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
        if words and words[0].endswith("/labkit"):
            commands.append(words[1:])
    assert ["workspace"] in commands and ["build"] in commands, out
    assert "--notebook-dir=workspace" in out  # JupyterLab opens the workspace, not labs/
    return commands


def test_fill_adds_missing_labs_and_never_replaces_a_file(tmp_path):
    labs, ws = tmp_path / "labs", tmp_path / "ws"
    labs.mkdir()
    (labs / "01.ipynb").write_text("fresh 01")
    assert workspace.fill(labs, ws) == (["01.ipynb"], [])
    (ws / "01.ipynb").write_text("my work")
    (labs / "02.ipynb").write_text("fresh 02")
    (labs / "01.ipynb").write_text("new version of 01")
    assert workspace.fill(labs, ws) == (["02.ipynb"], ["01.ipynb"])
    assert (ws / "01.ipynb").read_text() == "my work" and (ws / "02.ipynb").read_text() == "fresh 02"


def test_reset_moves_the_old_copy_aside_and_restores_a_fresh_one(tmp_path):
    labs, ws = tmp_path / "labs", tmp_path / "ws"
    labs.mkdir()
    (labs / "01_fgsm_mnist.ipynb").write_text("fresh")
    workspace.fill(labs, ws)
    for attempt in ("first try", "second try"):
        (ws / "01_fgsm_mnist.ipynb").write_text(attempt)
        moved, fresh = workspace.reset("01_fgsm_mnist", labs, ws)
        assert moved.parent == ws / "previous" and moved.read_text() == attempt
        assert fresh.read_text() == "fresh"
    kept = sorted(p.read_text() for p in (ws / "previous").glob("*.ipynb"))
    assert kept == ["first try", "second try"]  # two resets in the same second keep both


def test_reset_of_an_unknown_lab_names_the_labs(tmp_path):
    (tmp_path / "labs").mkdir()
    (tmp_path / "labs" / "01_fgsm_mnist.ipynb").write_text("x")
    with pytest.raises(targets.UnknownLab, match="01_fgsm_mnist"):
        workspace.reset("99_nothing", tmp_path / "labs", tmp_path / "ws")


def test_a_filled_workspace_notebook_survives_make_lab_build_and_a_kit_update(tmp_path, monkeypatch, capsys):
    root = _kit(tmp_path, monkeypatch)
    commands = [c for c in _make_lab_commands() if c[0] in ("build", "workspace")]
    for command in commands:  # first `make lab`
        assert cli.main(command) == 0
    mine = root / "workspace" / "01_lab.ipynb"
    assert mine.is_file()
    _learner_answers(mine)
    answered = mine.read_text()

    for command in commands:  # `make lab` again
        assert cli.main(command) == 0
    assert cli.main(["build"]) == 0
    assert mine.read_text() == answered

    # an update of the kit: the lab changes upstream and a new lab arrives
    _solution(root / "solutions", "01_lab.ipynb", "return the answer (new hint)")
    _solution(root / "solutions", "02_new.ipynb", "return the new answer")
    for command in commands:
        assert cli.main(command) == 0
    assert mine.read_text() == answered  # the learner's work is untouched
    assert "new hint" in (root / "labs" / "01_lab.ipynb").read_text()  # labs/ follows the kit
    assert (root / "workspace" / "02_new.ipynb").is_file()  # and the new lab is added
    out = capsys.readouterr().out
    assert "never overwritten" in out


def test_labs_is_not_where_learners_work():
    assert "workspace/" in (ROOT / ".gitignore").read_text().splitlines()


def test_attempts_are_kept_and_progress_reads_them(tmp_path):
    ws = tmp_path / "workspace"
    (ws).mkdir()
    shutil.copyfile(ROOT / "labs" / "01_fgsm_mnist.ipynb", ws / "01_fgsm_mnist.ipynb")
    workspace.record_attempt("01_fgsm_mnist", {"time": "t1", "passed": False, "todos": ["cell 7: fgsm"]}, ws)
    workspace.record_attempt("01_fgsm_mnist", {"time": "t2", "passed": True, "todos": [],
                                               "exercises": {"fgsm": "passed"}, "targets": {}}, ws)
    assert [a["time"] for a in workspace.attempts("01_fgsm_mnist", ws)] == ["t1", "t2"]
    rows = {r["lab"]: r for r in workspace.progress(ws)}
    assert rows["01_fgsm_mnist"]["attempts"] == 2 and rows["01_fgsm_mnist"]["passed_ever"]
    assert rows["01_fgsm_mnist"]["todos"] > 0  # the copy is still the blank lab
    assert not rows["03_dp_opacus"]["in_workspace"]


def test_cli_workspace_reset_and_progress(tmp_path, capsys):
    assert cli.main(["workspace"]) == 0
    ws = tmp_path / "workspace"
    assert (ws / "01_fgsm_mnist.ipynb").is_file()
    (ws / "01_fgsm_mnist.ipynb").write_text((ws / "01_fgsm_mnist.ipynb").read_text().replace("TODO", "DONE"))
    assert cli.main(["reset", "01_fgsm_mnist"]) == 0
    assert "previous copy is kept" in capsys.readouterr().out
    assert len(list((ws / "previous").glob("01_fgsm_mnist.*.ipynb"))) == 1
    workspace.record_attempt("01_fgsm_mnist", {"time": "2026-01-01T10:00:00", "passed": False, "todos": [],
                                               "exercises": {"fgsm": "passed", "perturb": "✗"},
                                               "targets": {"clean_accuracy": {"met": True}}}, ws)
    assert cli.main(["progress"]) == 0
    out = capsys.readouterr().out
    assert "01_fgsm_mnist" in out and "not passed yet" in out and "1/2" in out and "not checked yet" in out
    assert json.loads((ws / "attempts" / "01_fgsm_mnist.jsonl").read_text())["exercises"]["fgsm"] == "passed"


def test_build_keeps_work_done_in_labs_by_an_older_kit(tmp_path, monkeypatch, capsys):
    root = _kit(tmp_path, monkeypatch)
    assert cli.main(["build"]) == 0
    _learner_answers(root / "labs" / "01_lab.ipynb")  # worked in labs/, as the old kit let learners do
    answered = (root / "labs" / "01_lab.ipynb").read_text()
    _solution(root / "solutions", "01_lab.ipynb", "a new hint")  # the kit is updated
    assert cli.main(["build"]) == 0
    assert "kept your work from labs/" in capsys.readouterr().out
    assert (root / "workspace" / "01_lab.ipynb").read_text() == answered
    assert [p.read_text() for p in (root / "workspace" / "previous").glob("01_lab.from-labs.*.ipynb")] == [answered]
    assert "a new hint" in (root / "labs" / "01_lab.ipynb").read_text()
    assert cli.main(["build"]) == 0  # a stale but untouched lab is simply rebuilt
    assert len(list((root / "workspace" / "previous").glob("*.ipynb"))) == 1
