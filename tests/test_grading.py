"""`labkit grade`: a class's notebooks graded each in its own folder under limits; a crash, an endless
loop or a memory hog gets a zero with its reason and never stops the batch."""
import csv

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labkit import cli, grading, notebooks, targets

TOY = """
[labs.toy_lab]
title = "Toy"
level = "beginner"
notebook = "toy_lab.ipynb"
minutes = { quick = 1, full = 1 }
[labs.toy_lab.targets.quick]
score = { min = 0.5, description = "the toy's score" }
[labs.toy_lab.scoring]
exercises = { double = 3 }
"""

CHECK = '''
from labkit.check.common import Feedback, fail

class check:
    @staticmethod
    def double(fn):
        if fn(2) != 4:
            fail("double", f"double(2) returned {fn(2)}; multiply by two")
        return Feedback("double", True, "correct").show()
'''
SOLUTION = "def double(x):\n    # BEGIN SOLUTION: multiply by two\n    # HINT: what is 2 + 2?\n    return 2 * x\n    # END SOLUTION"
REPORT = "import labkit\nlabkit.report('toy_lab', {'score': 0.9 if double(3) == 6 else 0.1})"


@pytest.fixture
def toy_kit(tmp_path, monkeypatch):
    """A kit with one toy lab: targets file, solution, built learner notebook."""
    root = tmp_path / "kit"
    (root / "solutions").mkdir(parents=True)
    (root / "targets.toml").write_text(TOY)
    monkeypatch.setenv("LABKIT_TARGETS", str(root / "targets.toml"))
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    monkeypatch.setattr(notebooks, "repo_root", lambda: root)
    nb = new_notebook(cells=[new_markdown_cell("# Toy"), new_code_cell(CHECK), new_code_cell(SOLUTION),
                             new_code_cell("check.double(double)"), new_code_cell(REPORT)])
    nbformat.write(nb, root / "solutions" / "toy_lab.ipynb")
    notebooks.build()
    return root


def _student(folder, name, answer):
    lab = nbformat.read(notebooks.labs_dir() / "toy_lab.ipynb", as_version=4)
    lab.cells[2].source = answer
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(lab, folder / f"{name}.ipynb")


def test_scheme_reads_the_labs_scoring_with_defaults(toy_kit):
    scheme = grading.scheme("toy_lab", "quick")
    assert scheme.exercises == {"double": 3} and scheme.targets == {"score": grading.DEFAULT_TARGET_POINTS}
    assert scheme.total == 3 + grading.DEFAULT_TARGET_POINTS


def test_every_shipped_lab_has_a_scheme_with_points():
    for lab_id in targets.catalogue():
        scheme = grading.scheme(lab_id, "quick")
        assert scheme.targets and scheme.total > 0, lab_id
        assert set(targets.lab(lab_id).get("scoring", {}).get("exercises", {})) <= set(scheme.exercises), lab_id


def test_a_class_is_graded_and_a_crash_or_a_loop_never_stops_the_batch(toy_kit, tmp_path):
    subs = tmp_path / "class"
    _student(subs, "ada", "def double(x):\n    return 2 * x")
    _student(subs, "bob", "def double(x):\n    return x + 1")
    _student(subs, "cy", "import os\nos._exit(3)")  # the kernel dies
    _student(subs, "dee", "while True:\n    pass")  # never ends
    (subs / "eve").mkdir()  # a student's own folder
    _student(subs / "eve", "toy_lab", "def double(x):\n    return x * 2")
    out = tmp_path / "grades"
    code = cli.main(["grade", str(subs), "--lab", "toy_lab", "-j", "2", "--timeout", "20", "--out", str(out)])
    assert code == 0
    rows = {row["student"]: row for row in csv.DictReader((out / "gradebook.csv").open())}
    assert set(rows) == {"ada", "bob", "cy", "dee", "eve"}
    assert rows["ada"]["score"] == "4" and rows["eve"]["score"] == "4" and rows["ada"]["max_score"] == "4"
    assert rows["ada"]["exercise:double"] == "3" and rows["ada"]["target:score"] == "1" and not rows["ada"]["error"]
    assert rows["bob"]["score"] == "0" and rows["bob"]["exercise:double"] == "0" and not rows["bob"]["error"]
    assert rows["cy"]["score"] == "0" and "kernel died" in rows["cy"]["error"]
    assert rows["dee"]["score"] == "0" and "time-out" in rows["dee"]["error"]
    assert float(rows["dee"]["wall_time_s"]) < 60
    bob = (out / "feedback" / "bob.md").read_text()
    assert "double(2) returned 3; multiply by two" in bob and "0 of 3 points" in bob  # the check's own sentence
    assert "missed" in bob
    assert "endless loop" in (out / "feedback" / "dee.md").read_text()
    assert "passed" in (out / "feedback" / "ada.md").read_text()


def test_a_memory_hog_gets_a_zero(toy_kit, tmp_path):
    subs = tmp_path / "class"
    _student(subs, "hog", "hog = bytearray(600 * 2**20)\nimport time\ntime.sleep(30)")
    results = grading.grade_class(subs, "toy_lab", "quick", timeout_s=60, memory_mb=400)
    assert results[0].score == 0 and "out of memory" in results[0].error


def test_unfinished_exercises_score_zero_but_the_rest_still_runs(toy_kit, tmp_path):
    subs = tmp_path / "class"
    lab = nbformat.read(notebooks.labs_dir() / "toy_lab.ipynb", as_version=4)
    subs.mkdir()
    nbformat.write(lab, subs / "fresh.ipynb")  # the TODO left as it is
    [result] = grading.grade_class(subs, "toy_lab", "quick", timeout_s=60)
    assert result.todos and not result.error and result.score == 0
    assert "NotImplementedError" in result.exercises["double"] or "TODO" in result.exercises["double"]


def test_an_empty_or_missing_folder_is_a_clear_error(toy_kit, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["grade", str(tmp_path / "empty"), "--lab", "toy_lab"]) == 2
    assert cli.main(["grade", str(tmp_path / "nowhere"), "--lab", "toy_lab"]) == 2
    err = capsys.readouterr().err
    assert "No notebooks in" in err and "No folder" in err


def test_nbgrader_source_marks_solution_check_and_report_cells(toy_kit):
    """nbgrader takes the kit's BEGIN/END SOLUTION lines as they are, but wants its cell metadata:
    solution cells, and graded test cells with points (checked with nbgrader itself: README)."""
    nb = grading.nbgrader_source(toy_kit / "solutions" / "toy_lab.ipynb", "toy_lab")
    marks = [c.metadata.get("nbgrader") for c in nb.cells]
    assert marks[0] is None and marks[1] is None
    assert marks[2]["solution"] and not marks[2]["grade"]
    assert marks[3]["grade"] and marks[3]["points"] == 3 and marks[3]["grade_id"] == "check_double"
    assert marks[4]["grade"] and marks[4]["points"] == 1 and marks[4]["grade_id"] == "targets"
    assert all(m["schema_version"] == 3 for m in marks if m)
