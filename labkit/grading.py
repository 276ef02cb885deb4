"""Grade a class: every learner notebook of a folder, each in its own temporary folder, under a time
and memory limit, one at a time or N in parallel, into a gradebook CSV and a Markdown feedback file
per student.

A notebook that crashes its kernel, loops or runs past its time gets a zero with the reason and never
stops the batch. Learner code is untrusted: the limits protect the batch, not the machine (a notebook
can still read files, open sockets or start processes), so a class is graded inside a container
(README, "Grading a class").

Points come from the lab's `[labs.<id>.scoring]` table in targets.toml: `exercise_points` for every
check the lab calls and `target_points` for every target of the graded profile (defaults 2 and 1),
with overrides per exercise (`exercises = { fgsm = 4 }`) and per target (`targets = { ... }`).
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import notebooks, targets

DEFAULT_EXERCISE_POINTS = 2
DEFAULT_TARGET_POINTS = 1
DEFAULT_MEMORY_MB = 4096


@dataclass
class Submission:
    student: str
    path: Path


@dataclass
class Result:
    student: str
    notebook: str
    exercises: dict = field(default_factory=dict)  # name -> "passed" or the check's sentence
    targets: dict = field(default_factory=dict)  # metric -> {"value", "target", "met"}
    todos: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    score: float = 0.0
    max_score: float = 0.0
    wall_time_s: float = 0.0
    error: str = ""  # why the notebook got a zero (crash, time-out, memory); empty when it was graded


@dataclass
class Scheme:
    exercises: dict  # exercise -> points
    targets: dict  # metric -> points

    @property
    def total(self) -> float:
        return sum(self.exercises.values()) + sum(self.targets.values())


def scheme(lab_id: str, profile: str, exercises: list[str] | None = None) -> Scheme:
    """Points per exercise and per target for a lab, from its [scoring] table and the defaults."""
    entry = targets.lab(lab_id)
    scoring = entry.get("scoring", {})
    if exercises is None:
        exercises = lab_exercises(lab_id)
    per_exercise = scoring.get("exercise_points", DEFAULT_EXERCISE_POINTS)
    per_target = scoring.get("target_points", DEFAULT_TARGET_POINTS)
    exercise_points = {name: scoring.get("exercises", {}).get(name, per_exercise) for name in exercises}
    target_points = {t.metric: scoring.get("targets", {}).get(t.metric, per_target)
                     for t in targets.targets(lab_id, profile)}
    return Scheme(exercise_points, target_points)


def lab_exercises(lab_id: str) -> list[str]:
    """The checks the lab's learner notebook calls, in order (from the metadata `labkit build` wrote)."""
    import nbformat

    path = notebooks.labs_dir() / targets.lab(lab_id)["notebook"]
    if not path.is_file():
        raise targets.UnknownLab(f"No learner notebook {path} for lab {lab_id!r}; run `labkit build` first.")
    seen = []
    for _, name in notebooks.marked_exercises(nbformat.read(path, as_version=4)):
        if name not in seen:
            seen.append(name)
    return seen


def find_submissions(folder: Path, lab_id: str) -> list[Submission]:
    """Each `*.ipynb` in the folder is one student (named by the file), and each sub-folder holding a
    notebook is one student (named by the folder; the lab's notebook name, or its only notebook)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder {folder}: give the folder that holds the learners' notebooks.")
    found = [Submission(path.stem, path) for path in sorted(folder.glob("*.ipynb"))]
    expected = targets.lab(lab_id)["notebook"]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        candidates = [sub / expected] if (sub / expected).is_file() else sorted(sub.glob("*.ipynb"))
        if len(candidates) == 1:
            found.append(Submission(sub.name, candidates[0]))
        elif candidates:
            found.append(Submission(sub.name, candidates[0]))  # several: the first by name, said in the feedback
    names = [s.student for s in found]
    duplicates = {n for n in names if names.count(n) > 1}
    for s in found:
        if s.student in duplicates:
            s.student = f"{s.student} ({s.path.parent.name}/{s.path.name})"
    return found


def _kill_tree(process) -> None:
    import psutil

    try:
        parent = psutil.Process(process.pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


def _memory_mb(process) -> float:
    import psutil

    try:
        parent = psutil.Process(process.pid)
        total = 0
        for p in [parent] + parent.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def run_limited(command: list[str], cwd: Path, timeout_s: float, memory_mb: float, poll_s: float = 0.2) -> tuple[int | None, str, str]:
    """Run a command (and all it starts) under a wall-clock and a resident-memory limit.
    Returns (exit code or None when it was stopped, why it was stopped or "", its stderr's tail)."""
    log = cwd / "grader-stderr.txt"
    with open(log, "wb") as err:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        start, reason = time.monotonic(), ""
        while process.poll() is None:
            if time.monotonic() - start > timeout_s:
                reason = f"time-out: still running after {timeout_s:.0f} s (an endless loop, or too slow for the limit)"
            elif memory_mb and _memory_mb(process) > memory_mb:
                reason = f"out of memory: used more than {memory_mb:.0f} MB"
            if reason:
                _kill_tree(process)
                break
            time.sleep(poll_s)
        code = process.wait()
    tail = log.read_text(errors="replace")[-2000:]
    return (None if reason else code), reason, tail


def grade_one(sub: Submission, lab_id: str, profile: str, timeout_s: float, memory_mb: float, scheme_: Scheme) -> Result:
    """Grade one notebook in a temporary folder of its own, in a separate process under the limits."""
    result = Result(student=sub.student, notebook=str(sub.path), max_score=scheme_.total)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        work = Path(tmp)
        copy = work / sub.path.name
        shutil.copyfile(sub.path, copy)
        out = work / "grade.json"
        command = [sys.executable, "-m", "labkit.grading", "worker", str(copy), lab_id, profile, str(int(timeout_s)), str(out)]
        code, reason, tail = run_limited(command, work, timeout_s, memory_mb)
        result.wall_time_s = round(time.monotonic() - start, 1)
        minutes = targets.lab(lab_id).get("minutes", {}).get(profile)
        if reason.startswith("time-out") and minutes:
            result.error = f"{reason[:-1]}; the solution runs in {minutes:g} min in the {profile} profile)"
        elif reason:
            result.error = reason
        elif not out.is_file():
            last = [line for line in tail.splitlines() if line.strip()][-1:] or [f"exit code {code}"]
            result.error = f"the grader stopped before a grade was written ({last[0][:300]})"
        else:
            grade = json.loads(out.read_text())
            if grade.get("crash"):
                result.error = grade["crash"]
            result.todos, result.errors = grade["todos"], grade["errors"]
            result.exercises = dict(grade["exercises"])
            report = grade.get("report") or {}
            for metric in scheme_.targets:
                value = report.get("metrics", {}).get(metric)
                result.targets[metric] = {"value": value, "target": report.get("targets", {}).get(metric, ""),
                                          "met": bool(report.get("passes", {}).get(metric))}
    for name in scheme_.exercises:
        result.exercises.setdefault(name, "not run" if not result.error else f"not graded: {result.error}")
    if not result.error:
        result.score = (sum(p for n, p in scheme_.exercises.items() if result.exercises.get(n) == "passed")
                        + sum(p for m, p in scheme_.targets.items() if result.targets.get(m, {}).get("met")))
    return result


def worker(notebook: str, lab_id: str, profile: str, timeout: str, out: str) -> int:
    """In the grading process: run the notebook, write what `notebooks.grade` found as JSON."""
    try:
        grade = notebooks.grade(Path(notebook), lab_id, profile=profile, timeout=int(timeout), run_with_todos=True)
        found = asdict(grade)
    except Exception as err:  # noqa: BLE001 - a dead kernel or an unreadable notebook is the learner's zero, not ours
        name = type(err).__name__
        what = "the kernel died (a crash, or the notebook exited)" if "DeadKernel" in name else f"{name}: {err}"
        found = {"crash": f"crash: {str(what)[:500]}", "todos": [], "errors": [], "exercises": {}, "report": None}
    Path(out).write_text(json.dumps(found, default=str))
    return 0


def grade_class(folder: Path, lab_id: str, profile: str, jobs: int = 1, timeout_s: float | None = None,
                memory_mb: float = DEFAULT_MEMORY_MB, out_dir: Path | None = None, progress=None) -> list[Result]:
    """Grade every submission in `folder`; write gradebook.csv and feedback/<student>.md into out_dir."""
    subs = find_submissions(Path(folder), lab_id)
    if not subs:
        raise FileNotFoundError(f"No notebooks in {folder} (neither *.ipynb files nor sub-folders holding one).")
    scheme_ = scheme(lab_id, profile)
    if timeout_s is None:
        minutes = targets.lab(lab_id).get("minutes", {}).get(profile, 10)
        timeout_s = max(300.0, 4 * 60 * minutes)
    results = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(grade_one, s, lab_id, profile, timeout_s, memory_mb, scheme_): s for s in subs}
        for done in as_completed(futures):
            results.append(done.result())
            if progress:
                progress(len(results), len(subs), results[-1])
    results.sort(key=lambda r: r.student)
    if out_dir is not None:
        write_gradebook(results, scheme_, Path(out_dir) / "gradebook.csv")
        for r in results:
            write_feedback(r, scheme_, lab_id, profile, Path(out_dir) / "feedback" / f"{_safe(r.student)}.md")
    return results


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_gradebook(results: list[Result], scheme_: Scheme, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (["student"] + [f"exercise:{n}" for n in scheme_.exercises] + [f"target:{m}" for m in scheme_.targets]
              + ["score", "max_score", "percent", "wall_time_s", "todos_left", "error"])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in results:
            graded = not r.error
            row = [r.student]
            row += [points if graded and r.exercises.get(n) == "passed" else 0 for n, points in scheme_.exercises.items()]
            row += [points if graded and r.targets.get(m, {}).get("met") else 0 for m, points in scheme_.targets.items()]
            percent = round(100 * r.score / r.max_score, 1) if r.max_score else 0.0
            row += [f"{r.score:g}", f"{r.max_score:g}", percent, r.wall_time_s, len(r.todos), r.error]
            writer.writerow(row)


def feedback(r: Result, scheme_: Scheme, lab_id: str, profile: str) -> str:
    percent = 100 * r.score / r.max_score if r.max_score else 0.0
    out = [f"# Feedback for {r.student}: lab {lab_id} ({profile} profile)", "",
           f"**Score: {r.score:g} of {r.max_score:g} points ({percent:.0f}%).** Graded in {r.wall_time_s:.0f} s.", ""]
    if r.error:
        out += [f"**Your notebook got no points: {r.error}.** Run it yourself from the top (Kernel > Restart and run "
                f"all) and fix what stops it; nothing else was graded.", ""]
    if r.todos:
        out += [f"{len(r.todos)} TODO(s) were still open:", ""] + [f"- {t}" for t in r.todos] + [""]
    out += ["## Exercises", ""]
    for name, points in scheme_.exercises.items():
        verdict = r.exercises.get(name, "not run")
        if verdict == "passed":
            out.append(f"- `{name}` ({points:g} points): passed.")
        else:
            out.append(f"- `{name}` (0 of {points:g} points): {verdict}")
    out += ["", "## Targets", ""]
    for metric, points in scheme_.targets.items():
        t = r.targets.get(metric)
        if not t or t["value"] is None:
            out.append(f"- `{metric}` (0 of {points:g}): not measured (the report cell did not run to it)")
        else:
            value = t["value"]
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
            out.append(f"- `{metric}` target {t['target']}: {shown}, " + (f"met ({points:g} points)" if t["met"] else f"missed (0 of {points:g})"))
    if r.errors:
        out += ["", "## Errors in your notebook", ""] + [f"- {e}" for e in r.errors]
    return "\n".join(out) + "\n"


def write_feedback(r: Result, scheme_: Scheme, lab_id: str, profile: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(feedback(r, scheme_, lab_id, profile), encoding="utf-8")


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "worker":
    sys.exit(worker(*sys.argv[2:]))


# ---- nbgrader --------------------------------------------------------------------------------

def nbgrader_source(solution: Path, lab_id: str, profile: str = "quick"):
    """A solution notebook marked up for nbgrader's full pipeline (generate_assignment, autograde).

    nbgrader already recognises the kit's `# BEGIN SOLUTION` / `# END SOLUTION` lines, but it wants
    every cell holding one marked as a solution cell, and the cells that grade marked as tests with
    points: here each cell that calls a check gets the exercise's points, and the report cell (which
    fails when a target is missed) the points of all the targets. Cells tagged `solution-only` are
    left out, as `labkit build` does; `# HINT` lines stay in the solution (nbgrader clears them with it)."""
    import nbformat

    nb = nbformat.read(solution, as_version=4)
    points = scheme(lab_id, profile, exercises=[n for c in nb.cells if c.cell_type == "code"
                                                for n in notebooks.exercises_called(c.source)])
    kept = []
    for index, cell in enumerate(nb.cells):
        if notebooks.SOLUTION_ONLY in cell.metadata.get("tags", []):
            continue
        meta = None
        if cell.cell_type == "code" and "# BEGIN SOLUTION" in cell.source:
            meta = {"solution": True, "grade": False, "locked": False, "grade_id": f"answer_{index}"}
        elif cell.cell_type == "code" and notebooks.exercises_called(cell.source):
            name = notebooks.exercises_called(cell.source)[0]
            meta = {"solution": False, "grade": True, "locked": True, "points": points.exercises.get(name, 0),
                    "grade_id": f"check_{name}"}
        elif cell.cell_type == "code" and f'report("{lab_id}"' in cell.source.replace("'", '"'):
            meta = {"solution": False, "grade": True, "locked": True, "points": sum(points.targets.values()),
                    "grade_id": "targets"}
        if meta:
            cell.metadata["nbgrader"] = {**meta, "schema_version": 3}
        kept.append(cell)
    nb.cells = kept
    notebooks.clean(nb)
    return nb
