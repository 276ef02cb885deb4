import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from labkit import notebooks


def _solution(tmp_path, cells, name="toy_lab.ipynb"):
    folder = tmp_path / "solutions"
    folder.mkdir(exist_ok=True)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / name)
    return folder


def test_solution_block_becomes_a_todo_keeping_indentation_and_hint():
    source = "def f(x):\n    # BEGIN SOLUTION: double x\n    return 2 * x\n    # END SOLUTION\nprint(f(1))"
    stub = notebooks.strip_solution(source, "nb, cell 1")
    assert "return 2 * x" not in stub
    assert '    # TODO: double x\n    raise NotImplementedError("TODO: double x")' in stub
    assert stub.startswith("def f(x):") and stub.endswith("print(f(1))")


@pytest.mark.parametrize("source, problem", [
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "no '# BEGIN SOLUTION' before it"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "still open"),
])
def test_unmatched_markers_name_the_notebook_and_cell(tmp_path, source, problem):
    folder = _solution(tmp_path, [new_code_cell("import os"), new_code_cell(source)], name="broken.ipynb")
    with pytest.raises(notebooks.NotebookBuildError) as err:
        notebooks.build(folder, tmp_path / "labs")
    assert "solutions/broken.ipynb, cell 2" in str(err.value) and problem in str(err.value)
    assert not (tmp_path / "labs" / "broken.ipynb").exists()


def test_markers_in_markdown_are_refused(tmp_path):
    folder = _solution(tmp_path, [new_markdown_cell("# BEGIN SOLUTION\ntext\n# END SOLUTION")])
    with pytest.raises(notebooks.NotebookBuildError, match="cell 1: solution markers belong in code cells"):
        notebooks.build(folder, tmp_path / "labs")


def test_build_drops_solution_only_cells_and_outputs(tmp_path):
    answer = new_code_cell("print('answer')", metadata={"tags": ["solution-only"]})
    ran = new_code_cell("y = 2\n# BEGIN SOLUTION\ny = 3\n# END SOLUTION", execution_count=4,
                        outputs=[new_output("stream", name="stdout", text="3")])
    folder = _solution(tmp_path, [new_markdown_cell("# Toy"), answer, ran])
    labs = tmp_path / "labs"
    assert notebooks.build(folder, labs) == ["labs/toy_lab.ipynb (missing)"]
    lab = nbformat.read(labs / "toy_lab.ipynb", as_version=4)
    assert len(lab.cells) == 2
    assert lab.cells[1].outputs == [] and lab.cells[1].execution_count is None
    assert "y = 3" not in lab.cells[1].source and notebooks.TODO_MARKER in lab.cells[1].source
    # the solution itself is untouched
    assert "y = 3" in nbformat.read(folder / "toy_lab.ipynb", as_version=4).cells[2].source


def test_check_mode_names_stale_and_orphan_labs_without_writing(tmp_path):
    folder = _solution(tmp_path, [new_code_cell("x = 1")])
    labs = tmp_path / "labs"
    notebooks.build(folder, labs)
    assert notebooks.build(folder, labs, check=True) == []
    (labs / "toy_lab.ipynb").write_text((labs / "toy_lab.ipynb").read_text().replace("x = 1", "x = 2"))
    (labs / "old.ipynb").write_text("{}")
    stale = notebooks.build(folder, labs, check=True)
    assert stale == ["labs/toy_lab.ipynb (differs from its solution)", "labs/old.ipynb (has no solution notebook)"]
    assert "x = 2" in (labs / "toy_lab.ipynb").read_text()  # --check changed nothing
    notebooks.build(folder, labs)
    assert notebooks.build(folder, labs, check=True) == [] and not (labs / "old.ipynb").exists()


def test_outputs_in_committed_notebooks_are_found(tmp_path):
    folder = _solution(tmp_path, [new_code_cell("x = 1"), new_code_cell("y = 2", execution_count=1)])
    assert notebooks.notebooks_with_outputs([folder]) == ["solutions/toy_lab.ipynb, cell 2"]


def test_todos_are_listed_with_their_hints(tmp_path):
    folder = _solution(tmp_path, [new_code_cell("# BEGIN SOLUTION: write fgsm\npass\n# END SOLUTION")])
    notebooks.build(folder, tmp_path / "labs")
    lab = nbformat.read(tmp_path / "labs" / "toy_lab.ipynb", as_version=4)
    assert notebooks.find_todos(lab) == ["cell 1: write fgsm"]


GRADED_TARGETS = """
[labs.toy_lab]
title = "Toy"
level = "beginner"
notebook = "toy_lab.ipynb"
minutes = { quick = 1, full = 1 }
[labs.toy_lab.targets.quick]
score = { min = 0.5 }
"""

EXERCISE = '''
from labkit.check.common import Feedback, fail

class check:
    @staticmethod
    def double(fn):
        if fn(2) != 4:
            fail("double", f"double(2) returned {fn(2)}; multiply by two")
        return Feedback("double", True, "correct").show()
'''


def _built_lab(tmp_path, cells):
    folder = _solution(tmp_path, cells)
    notebooks.build(folder, tmp_path / "labs")
    return tmp_path / "labs" / "toy_lab.ipynb"


@pytest.mark.parametrize("body, score, exercise_ok, passed", [
    ("def double(x):\n    return 2 * x", 0.9, True, True),
    ("def double(x):\n    return x + 1", 0.9, False, False),
    ("def double(x):\n    return 2 * x", 0.1, True, False),
])
def test_grade_reports_exercises_and_targets(tmp_path, monkeypatch, body, score, exercise_ok, passed):
    targets_file = tmp_path / "targets.toml"
    targets_file.write_text(GRADED_TARGETS)
    monkeypatch.setenv("LABKIT_TARGETS", str(targets_file))
    lab = _built_lab(tmp_path, [
        new_code_cell(EXERCISE), new_code_cell(body), new_code_cell("check.double(double)"),
        new_code_cell(f"import labkit\nlabkit.report('toy_lab', {{'score': {score}}})"),
    ])
    grade = notebooks.grade(lab, "toy_lab", profile="quick", timeout=120)
    assert grade.todos == []
    assert (grade.exercises["double"] == "passed") is exercise_ok
    if not exercise_ok:
        assert "multiply by two" in grade.exercises["double"]
    assert grade.report is not None and grade.report["passed"] is (score > 0.5)
    assert grade.passed is passed


def test_build_marks_exercise_cells_in_metadata_not_by_text(tmp_path):
    lab = _built_lab(tmp_path, [
        new_code_cell("%matplotlib inline\nfrom labkit import check"),
        new_code_cell("check.fgsm(fgsm)"),
        new_code_cell('assert gap < 0.01, "your FGSM and cleverhans disagree: re-run check.fgsm(fgsm)"'),
        new_code_cell("labkit.check.perturb(perturb, eps_now, 1.25)  # check.other(x) in a comment"),
    ])
    nb = nbformat.read(lab, as_version=4)
    assert [c.metadata.get("labkit") for c in nb.cells] == [None, {"exercise": "fgsm"}, None, {"exercise": "perturb"}]
    assert notebooks.marked_exercises(nb) == [(1, "fgsm"), (3, "perturb")]


def test_grade_keeps_the_checks_own_verdict_and_shows_progress(tmp_path):
    lab = _built_lab(tmp_path, [
        new_code_cell(EXERCISE),
        new_code_cell("def double(x):\n    return 2 * x"),
        new_code_cell("check.double(double)"),
        # an assert whose message names the check must not overwrite the check's verdict
        new_code_cell('assert False, "re-run check.double(double)"'),
        new_code_cell("undefined_name"),
        new_code_cell("check.missing(double)"),
        new_code_cell("check.triple(double)"),
    ])
    nb = nbformat.read(lab, as_version=4)
    nb.cells[6].source = "# check.triple(double) commented out by the learner"
    nbformat.write(nb, lab)
    seen = []
    grade = notebooks.grade(lab, "toy_lab", timeout=120, progress=lambda *a: seen.append(a))
    assert grade.exercises["double"] == "passed"
    assert grade.exercises["missing"] == "AttributeError: type object 'check' has no attribute 'missing'"
    assert grade.exercises["triple"] == "not checked: cell 7 ran without calling check.triple"
    assert any("re-run check.double" in e for e in grade.errors)
    assert [(i, n) for i, n, *_ in seen] == [(i, 7) for i in range(1, 8)]
    assert seen[2][3] == "check.double(double)"  # the running cell's first line
