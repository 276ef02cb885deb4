"""The committed tree itself: labs generated from solutions, no outputs, every lab catalogued."""
from pathlib import Path

import nbformat

from labkit import notebooks, targets

ROOT = Path(__file__).resolve().parent.parent


def test_labs_are_generated_from_the_current_solutions():
    stale = notebooks.build(ROOT / "solutions", ROOT / "labs", check=True)
    assert not stale, "labs/ is stale; run `labkit build`: " + ", ".join(stale)


def test_committed_notebooks_carry_no_outputs():
    found = notebooks.notebooks_with_outputs([ROOT / "solutions", ROOT / "labs"])
    assert not found, "strip outputs (run `labkit build` for labs/): " + ", ".join(found)


def test_every_solution_is_in_the_catalogue_and_ends_with_a_report():
    catalogued = {entry["notebook"]: lab_id for lab_id, entry in targets.catalogue().items()}
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    assert solutions, "no solution notebooks"
    assert set(catalogued) == {p.name for p in solutions}
    for path in solutions:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell must be tagged parameters"
        assert f'report("{catalogued[path.name]}"' in code[-1].source.replace("'", '"'), f"{path.name}: last code cell must call labkit.report"


def test_learner_labs_keep_no_solution_code():
    for path in sorted((ROOT / "labs").glob("*.ipynb")):
        text = path.read_text()
        assert "# BEGIN SOLUTION" not in text and "solution-only" not in text, path.name


def test_environment_yml_has_the_same_pins_as_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = set(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "all":
            pinned |= set(requirements)
    lines = [line.strip() for line in (ROOT / "environment.yml").read_text().splitlines()]
    conda_pins = {line[2:] for line in lines if line.startswith("- ") and "==" in line}
    assert conda_pins == pinned, f"only in environment.yml: {conda_pins - pinned}; only in pyproject: {pinned - conda_pins}"
    assert "- python=3.11" in lines


def test_every_pin_agrees_with_the_constraints_file():
    import re
    import tomllib

    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + [r for k, v in project["optional-dependencies"].items() if k != "all" for r in v]
    for requirement in requirements:
        name, version = requirement.split("==")
        name = re.sub(r"\[.*\]", "", name)
        assert constraints.get(re.sub(r"[-_.]+", "-", name).lower()) == version, f"{requirement} disagrees with constraints.txt"


def test_every_lab_marks_its_checks_for_grading():
    """`labkit check` grades the exercises `labkit build` marked in cell metadata."""
    for path in sorted((ROOT / "labs").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if notebooks.find_todos(nb):
            assert notebooks.marked_exercises(nb), f"{path.name}: no cell calls a labkit check"
