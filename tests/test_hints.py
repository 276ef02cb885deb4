"""Progressive hints: written next to the answer in the solution, carried by `labkit build` into the
learner notebook's metadata, shown one per `check.hint(name)` call."""
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from labkit import notebooks
from labkit.check import hints

ROOT = Path(__file__).resolve().parent.parent

SOLUTION = ("def double(x):\n    # BEGIN SOLUTION: multiply by two\n    # HINT: the answer is a product\n"
            "    # HINT: x times a number\n    # HINT: return 2 * x\n    return 2 * x\n    # END SOLUTION")


def _build(tmp_path, cells):
    folder = tmp_path / "solutions"
    folder.mkdir(exist_ok=True)
    nbformat.write(new_notebook(cells=cells), folder / "toy_lab.ipynb")
    notebooks.build(folder, tmp_path / "labs")
    return tmp_path / "labs" / "toy_lab.ipynb"


@pytest.fixture(autouse=True)
def fresh_counter(monkeypatch):
    monkeypatch.setattr(hints, "_shown", {})


def test_build_moves_the_hints_into_metadata_and_says_how_to_ask(tmp_path):
    lab = _build(tmp_path, [new_code_cell(SOLUTION), new_code_cell("check.double(double)")])
    nb = nbformat.read(lab, as_version=4)
    assert notebooks.hints_of(nb) == {"double": ["the answer is a product", "x times a number", "return 2 * x"]}
    assert "2 * x" not in nb.cells[0].source and "HINT" not in nb.cells[0].source
    assert 'check.hint("double")' in nb.cells[0].source
    assert notebooks.find_todos(nb) == ["cell 1: multiply by two"]  # the hint line is not a TODO


def test_hints_come_one_per_call_then_stay_at_the_last(tmp_path, capsys):
    lab = _build(tmp_path, [new_code_cell(SOLUTION), new_code_cell("check.double(double)")])
    for n in (1, 2, 3, 3):
        hints.hint("double", places=[lab])
        out = capsys.readouterr().out
        assert out.startswith(f"Hint {n} of 3 for double:")
    assert "last hint" in out
    hints.hint("double", 1, places=[lab])
    assert "the answer is a product" in capsys.readouterr().out
    with pytest.raises(ValueError, match="hints 1 to 3"):
        hints.hint("double", 4, places=[lab])
    with pytest.raises(KeyError, match='Exercises with hints here: "double"'):
        hints.hint("triple", places=[lab])


def test_a_named_hint_and_misplaced_hints(tmp_path):
    named = "def f():\n    # BEGIN SOLUTION\n    # HINT(other): look left\n    return 1\n    # END SOLUTION"
    lab = _build(tmp_path, [new_code_cell(named)])
    assert notebooks.hints_of(nbformat.read(lab, as_version=4)) == {"other": ["look left"]}
    with pytest.raises(notebooks.NotebookBuildError, match="outside a solution block"):
        _build(tmp_path, [new_code_cell("# HINT: visible at once\nx = 1"), new_code_cell("check.double(f)")])
    orphan = "def f():\n    # BEGIN SOLUTION\n    # HINT: for what?\n    return 1\n    # END SOLUTION"
    with pytest.raises(notebooks.NotebookBuildError, match="belong to no exercise"):
        _build(tmp_path, [new_code_cell(orphan)])


def test_a_learner_kernel_finds_the_hints_of_its_own_notebook(tmp_path):
    """Through `labkit build` and a real kernel: the learner's copy carries its hints."""
    named = SOLUTION.replace("# HINT:", "# HINT(double):")
    lab = _build(tmp_path, [new_code_cell(named), new_code_cell("from labkit import check\ncheck.hint('double')\ncheck.hint('double')")])
    ws = tmp_path / "ws"
    ws.mkdir()
    copy = ws / "toy_lab.ipynb"
    copy.write_text(lab.read_text())
    executed = notebooks.execute(copy, allow_errors=True, timeout=120)
    out = "".join(o.get("text", "") for o in executed.cells[1].outputs)
    assert "Hint 1 of 3 for double: the answer is a product" in out and "Hint 2 of 3" in out


def test_shipped_hints_are_short_lists_and_never_clash_across_labs():
    """check.hint(name) finds a name in any lab of the folder, so one name must mean one exercise."""
    owner = {}
    for path in sorted((ROOT / "labs").glob("*.ipynb")):
        for name, texts in notebooks.hints_of(nbformat.read(path, as_version=4)).items():
            assert 1 <= len(texts) <= 5 and all(t.strip() for t in texts), path.name
            assert owner.setdefault(name, path.name) == path.name, f"hints for {name!r} in {owner[name]} and {path.name}"
