"""The notebook toolchain: build learner labs from solutions, check they are current, run and grade.

A solution notebook marks what the learner writes with `# BEGIN SOLUTION` / `# END SOLUTION`
lines (text after BEGIN SOLUTION becomes the TODO hint). `build` replaces each block with a TODO
comment and `raise NotImplementedError`, drops cells tagged `solution-only`, strips outputs, and
marks each cell that calls a check with metadata `{"labkit": {"exercise": name}}`, so grading
knows the exercises without reading cell text.

Progressive hints are written next to the answer, inside the solution block, one `# HINT:` line
each (`# HINT(name):` names the exercise; otherwise it is the first check called in that cell or a
later one). `build` removes them from the code, keeps them in the learner notebook's metadata
(`{"labkit": {"hints": {exercise: [hint 1, hint 2, ...]}}}`), where `check.hint(exercise)` reads
them, and says so under the TODO.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .targets import repo_root
from .workspace import read_json_lines

BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION(?::?\s*(?P<hint>.*))?$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
HINT = re.compile(r"^\s*# HINT(?:\((?P<name>\w+)\))?:\s*(?P<text>.*\S)\s*$")
SOLUTION_ONLY = "solution-only"
TODO_MARKER = "raise NotImplementedError"
DEFAULT_HINT = "your code here"
META = "labkit"  # the cell metadata key build writes: {"exercise": name}
NOT_EXERCISES = {"hint"}  # check.<name> calls that grade nothing


class NotebookBuildError(ValueError):
    """A solution notebook's markers do not pair up."""


def _root() -> Path:
    return repo_root() or Path.cwd()


def solutions_dir() -> Path:
    return _root() / "solutions"


def labs_dir() -> Path:
    return _root() / "labs"


def strip_solution(source: str, where: str) -> str:
    """Replace every BEGIN/END SOLUTION block of one cell's source with a TODO stub."""
    return split_solution(source, where)[0]


def split_solution(source: str, where: str, exercise: str | None = None) -> tuple[str, list[tuple[str | None, str]]]:
    """(the cell with every solution block replaced by a TODO stub, the block's hints as (name, text)).

    A hint names its exercise with `# HINT(name):`; otherwise its name is None here. When the cell
    has hints and `exercise` is known, the stub says how to ask for them."""
    out, inside, begin_line, hints = [], False, 0, []
    stub_at = []  # (index in out after the TODO comment, indent) of each block
    for number, line in enumerate(source.splitlines(), start=1):
        begin, end, hint = BEGIN.match(line), END.match(line), HINT.match(line)
        if begin:
            if inside:
                raise NotebookBuildError(
                    f"{where}: line {number} opens '# BEGIN SOLUTION' while the block opened on line "
                    f"{begin_line} is still open; add '# END SOLUTION' before it.")
            inside, begin_line = True, number
            indent, todo = begin.group("indent"), (begin.group("hint") or "").strip() or DEFAULT_HINT
            out.append(f"{indent}# TODO: {todo}")
            stub_at.append((len(out), indent))
            out.append(f'{indent}{TODO_MARKER}("TODO: {todo}")')
        elif end:
            if not inside:
                raise NotebookBuildError(
                    f"{where}: line {number} has '# END SOLUTION' with no '# BEGIN SOLUTION' before it.")
            inside = False
        elif hint:
            if not inside:
                raise NotebookBuildError(
                    f"{where}: line {number} has a '# HINT:' outside a solution block, where the learner would "
                    f"read it at once; move it between '# BEGIN SOLUTION' and '# END SOLUTION'.")
            hints.append((hint.group("name"), hint.group("text")))
        elif not inside:
            out.append(line)
    if inside:
        raise NotebookBuildError(
            f"{where}: '# BEGIN SOLUTION' on line {begin_line} is never closed; add '# END SOLUTION'.")
    names = {name or exercise for name, _ in hints}
    if hints and len(names) == 1 and None not in names:
        name = names.pop()
        for position, indent in reversed(stub_at):
            out.insert(position, f'{indent}# Stuck? check.hint("{name}") shows a hint; run it again for the next one.')
    return "\n".join(out), hints


def clean(nb) -> None:
    """Remove outputs, execution counts and run-specific metadata, in place."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    for key in ("widgets", "papermill"):
        nb.metadata.pop(key, None)


def exercises_called(source: str) -> list[str]:
    """The checks a cell calls as statements of its own, `check.<exercise>(...)` or
    `labkit.check.<exercise>(...)`, found in the parsed code (a string or comment naming a check
    is not a call). IPython magics and shell lines are left out before parsing."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    found = []
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign)) else None
        if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Attribute):
            continue
        owner = value.func.value
        if (isinstance(owner, ast.Name) and owner.id == "check") or (
                isinstance(owner, ast.Attribute) and owner.attr == "check"
                and isinstance(owner.value, ast.Name) and owner.value.id == "labkit"):
            if value.func.attr not in NOT_EXERCISES:
                found.append(value.func.attr)
    return found


def mark_exercises(nb) -> None:
    """Write the exercise metadata on every cell that calls a check; remove stale marks."""
    for cell in nb.cells:
        cell.metadata.pop(META, None)
        if cell.cell_type != "code":
            continue
        called = exercises_called(cell.source)
        if called:
            cell.metadata[META] = {"exercise": called[0]} if len(called) == 1 else {"exercises": called}


def marked_exercises(nb) -> list[tuple[int, str]]:
    """(cell index, exercise) for every cell `build` marked."""
    found = []
    for index, cell in enumerate(nb.cells):
        meta = cell.metadata.get(META, {})
        for name in ([meta["exercise"]] if "exercise" in meta else meta.get("exercises", [])):
            found.append((index, name))
    return found


def _exercise_after(cells, index: int) -> str | None:
    """The exercise a solution block in cell `index` feeds: the first check called in it or a later cell."""
    for cell in cells[index:]:
        if cell.cell_type == "code":
            called = exercises_called(cell.source)
            if called:
                return called[0]
    return None


def learner_version(nb, name: str):
    """The learner's notebook made from a solution notebook (a new object)."""
    lab = nbformat.from_dict(json.loads(json.dumps(nb)))
    kept, hints = [], {}
    for index, cell in enumerate(lab.cells):
        if SOLUTION_ONLY in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code":
            where = f"{name}, cell {index + 1}"
            exercise = _exercise_after(lab.cells, index) if "# HINT" in cell.source else None
            cell.source, found = split_solution(cell.source, where, exercise)
            for hint_name, text in found:
                hint_name = hint_name or exercise
                if hint_name is None:
                    raise NotebookBuildError(
                        f"{where}: no check is called in this cell or after it, so its hints belong to no exercise; "
                        f"name it: '# HINT(name): ...'.")
                hints.setdefault(hint_name, []).append(text)
        elif "# BEGIN SOLUTION" in cell.source or "# END SOLUTION" in cell.source:
            raise NotebookBuildError(
                f"{name}, cell {index + 1}: solution markers belong in code cells; this is a {cell.cell_type} cell.")
        kept.append(cell)
    lab.cells = kept
    clean(lab)
    mark_exercises(lab)
    lab.metadata.pop(META, None)
    if hints:
        lab.metadata[META] = {"hints": hints}
    return lab


def hints_of(nb) -> dict[str, list[str]]:
    """{exercise: [hint 1, hint 2, ...]} that `build` stored in a learner notebook."""
    return dict(nb.metadata.get(META, {}).get("hints", {}))


def _serialise(nb) -> str:
    return nbformat.writes(nb, version=4) + "\n"


def planned_labs(solutions: Path | None = None) -> dict[str, str]:
    """{lab file name: the text `build` would write} for every solution notebook."""
    solutions = solutions or solutions_dir()
    planned = {}
    for path in sorted(solutions.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        planned[path.name] = _serialise(learner_version(nb, f"{solutions.name}/{path.name}"))
    return planned


def build(solutions: Path | None = None, labs: Path | None = None, check: bool = False) -> list[str]:
    """Write labs/ from solutions/. With check=True write nothing and return the stale labs."""
    labs = labs or labs_dir()
    planned = planned_labs(solutions)
    stale = []
    for name, text in planned.items():
        target = labs / name
        if not target.is_file() or target.read_text() != text:
            stale.append(f"labs/{name} ({'missing' if not target.is_file() else 'differs from its solution'})")
            if not check:
                labs.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
    for orphan in sorted(set(p.name for p in labs.glob("*.ipynb")) - set(planned)):
        stale.append(f"labs/{orphan} (has no solution notebook)")
        if not check:
            (labs / orphan).unlink()
    return stale


def notebooks_with_outputs(folders: list[Path]) -> list[str]:
    """Committed notebooks must carry no outputs and no execution counts."""
    found = []
    for folder in folders:
        for path in sorted(folder.glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
                    found.append(f"{folder.name}/{path.name}, cell {index + 1}")
                    break
    return found


# ---- running and grading ----------------------------------------------------------------------

@dataclass
class Grade:
    notebook: str
    todos: list[str] = field(default_factory=list)
    exercises: dict[str, str] = field(default_factory=dict)  # name -> "passed" or the feedback
    errors: list[str] = field(default_factory=list)
    report: dict | None = None
    wall_time_s: float = 0.0

    @property
    def passed(self) -> bool:
        return (not self.todos and not self.errors and self.report is not None and self.report.get("passed", False)
                and all(v == "passed" for v in self.exercises.values()))


def find_todos(nb) -> list[str]:
    todos = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or TODO_MARKER not in cell.source:
            continue
        hints = re.findall(r"# TODO: (.*)", cell.source) or ["unfinished code"]
        for hint in hints:
            todos.append(f"cell {index + 1}: {hint}")
    return todos


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()[:70]
    return ""


def execute(path: Path, profile: str | None = None, timeout: int = 1800, allow_errors: bool = False,
            results_dir: Path | None = None, check_log: Path | None = None, progress=None):
    """Execute a notebook in its own folder with nbclient; returns the executed notebook.

    progress: called as progress(i, n, cell_index, first_line, elapsed_s) when the i-th of the n
    code cells starts, so a long run is never silent. check_log: where the checks record verdicts."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # The kernel gets its own environment; this process's os.environ stays as it was.
    kernel_env = {**os.environ, "MPLBACKEND": os.environ.get("MPLBACKEND", "Agg")}
    if profile:
        kernel_env["LABKIT_PROFILE"] = profile
    if results_dir:
        kernel_env["LABKIT_RESULTS"] = str(results_dir)
    if check_log:
        kernel_env["LABKIT_CHECK_LOG"] = str(check_log)
    hooks = {}
    if progress is not None:
        code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        start = time.perf_counter()

        def on_cell_start(cell, cell_index, **_):
            if cell_index in code_cells:
                progress(code_cells.index(cell_index) + 1, len(code_cells), cell_index, _first_line(cell.source),
                         time.perf_counter() - start)

        hooks["on_cell_start"] = on_cell_start
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                            resources={"metadata": {"path": str(path.parent)}}, **hooks)
    # The kernel's own start-up chatter (transport warnings) is not the learner's business;
    # cell errors still arrive as error outputs.
    client.execute(env=kernel_env, stderr=subprocess.DEVNULL)
    return nb


def _errors(nb) -> list[tuple[int, dict]]:
    return [(index, output) for index, cell in enumerate(nb.cells) for output in cell.get("outputs", [])
            if output.get("output_type") == "error"]


def grade(path: Path, lab_id: str, profile: str | None = None, timeout: int = 1800, progress=None,
          run_with_todos: bool = False) -> Grade:
    """Grade a learner's notebook: TODOs left, each exercise `build` marked, and the lab's targets.

    Each check records its own verdict while the notebook runs, so a failed check's sentence is
    what the learner reads here, and an exercise whose cell never ran says so. A notebook with TODOs
    left is not run (the learner is told what is open), unless run_with_todos (a class's grading,
    where the finished exercises still count)."""
    nb = nbformat.read(path, as_version=4)
    result = Grade(notebook=str(path), todos=find_todos(nb))
    if result.todos and not run_with_todos:
        return result  # running would only stop at the first TODO
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "checks.jsonl"
        executed = execute(path, profile=profile, timeout=timeout, allow_errors=True, results_dir=Path(tmp),
                           check_log=log, progress=progress)
        report_file = Path(tmp) / f"{lab_id}.json"
        if report_file.is_file():
            result.report = json.loads(report_file.read_text())
        verdicts = {}
        for entry in read_json_lines(log):  # the last verdict of each exercise counts
            verdicts[entry["exercise"]] = "passed" if entry["passed"] else entry["message"]
    result.wall_time_s = time.perf_counter() - start
    failed_cells = dict(_errors(executed))
    for index, exercise in marked_exercises(executed):
        if exercise in verdicts:
            result.exercises[exercise] = verdicts[exercise]
        elif index in failed_cells:
            out = failed_cells[index]
            result.exercises[exercise] = f"{out['ename']}: {out['evalue']}"
        else:
            result.exercises[exercise] = f"not checked: cell {index + 1} ran without calling check.{exercise}"
    for exercise, verdict in verdicts.items():  # checks called in cells build did not mark
        result.exercises.setdefault(exercise, verdict)
    for index, output in failed_cells.items():
        if output["ename"] in ("ExerciseFailed", "TargetMissed"):
            continue
        result.errors.append(f"cell {index + 1}: {output['ename']}: {output['evalue']}")
    return result
