"""The `labkit` command: doctor, list, data, build, run, workspace, reset, check, progress, pretrain."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from . import course, datasets, env, notebooks, targets, workspace
from .tables import format_table


def _is_problem(name: str, state: str, asked: bool) -> bool:
    """A file that is not ok is a problem, except an optional dataset missing when nobody asked for it."""
    optional = not datasets.info(name).get("shipped", True)
    return state != "ok" and not (optional and state == "missing" and not asked)


def cmd_doctor(args) -> int:
    problems = 0
    found = env.versions(include_missing=True)
    print(f"labkit {found.pop('labkit')} on Python {found.pop('python')} ({platform.system()} {platform.machine()})")
    try:
        print(f"profile: {env.profile()}")
    except env.ProfileError as err:
        print(f"profile: ERROR {err}")
        problems += 1
    print(f"device:  {env.device_name()}")
    print("\npackages:")
    print(format_table(("package", "version"), list(found.items())))
    print("\ndata (sha256 verified):")
    rows = []
    for name in datasets.names():
        for path, state, detail in datasets.status(name):
            problem = _is_problem(name, state, asked=False)
            problems += problem
            shown = state if state == "ok" or problem else f"{state} (optional)"
            rows.append((name, path, shown, detail if state == "ok" else detail.split(". ")[-1]))
    print(format_table(("dataset", "file", "state", "where / fix"), rows))
    if notebooks.solutions_dir().is_dir():
        stale = notebooks.build(check=True)
        print(f"\nlabs/: {'up to date' if not stale else 'STALE: ' + ', '.join(stale) + ' (run `labkit build`)'}")
        problems += bool(stale)
        try:
            pages = course.write(check=True)
        except course.CourseError as err:
            pages = [str(err)]
        print(f"course pages: {'up to date' if not pages else 'STALE: ' + ', '.join(pages) + ' (run `labkit course`)'}")
        problems += bool(pages)
    print("\nall good" if not problems else f"\n{problems} problem(s) found")
    return 1 if problems else 0


def cmd_list(args) -> int:
    rows = []
    known = {lab.id: lab for lab in course.labs()}
    for lab in known.values():
        prerequisites = ", ".join(known[p].number if p in known else p for p in lab.prerequisites) or "-"
        rows.append((lab.id, lab.level, lab.title, prerequisites, course.format_minutes(lab.minutes.get("quick")),
                     course.format_minutes(lab.minutes.get("full"))))
    print(format_table(("lab", "level", "title", "needs", "quick (CPU)", "full (GPU)"), rows))
    print("The course map, with three paths: labs/START.md (also in your workspace).")
    return 0


def cmd_course(args) -> int:
    errors, warnings = course.problems()
    for warning in warnings:
        print(f"warning: {warning}")
    for error in errors:
        print(f"ERROR:   {error}", file=sys.stderr)
    stale = course.write(check=args.check)
    if args.check:
        if stale:
            print("Stale (run `labkit course`):\n  " + "\n  ".join(stale))
        else:
            print("Course pages and README catalogue are up to date.")
        return 1 if stale or errors else 0
    print(("Wrote:\n  " + "\n  ".join(stale)) if stale else "Course pages and README catalogue were up to date.")
    return 1 if errors else 0


def cmd_data(args) -> int:
    names = args.names or datasets.names()
    for name in names:
        datasets.info(name)
    failures = 0
    for name in names:
        if args.action == "fetch":
            try:
                for path in datasets.fetch(name):
                    print(f"ok       {name}: {path}")
            except datasets.DatasetError as err:
                print(f"FAILED   {name}: {err}")
                failures += 1
        else:
            for path, state, detail in datasets.status(name):
                print(f"{state:<9}{name}: {detail}")
                failures += _is_problem(name, state, asked=bool(args.names))
    return 1 if failures else 0


def cmd_build_wordnet(args) -> int:
    from . import textattack_offline

    out = textattack_offline.build_wordnet_zip(args.source, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {datasets.sha256_of(out)}); "
          "put the sha256 in data/MANIFEST.toml under [nltk_data]")
    return 0


def cmd_build(args) -> int:
    if not args.check:
        for copy in workspace.rescue_edited_labs(notebooks.planned_labs()):
            print(f"kept your work from labs/ at {copy}")
    stale = notebooks.build(check=args.check)
    if args.check:
        if stale:
            print("Stale labs (run `labkit build`):\n  " + "\n  ".join(stale))
            return 1
        print("labs/ is up to date with solutions/.")
        return 0
    print(("Rebuilt:\n  " + "\n  ".join(stale)) if stale else "labs/ was already up to date.")
    return 0


def _solution_path(lab_id: str) -> Path:
    entry = targets.lab(lab_id)
    return notebooks.solutions_dir() / entry["notebook"]


def cmd_run(args) -> int:
    path = _solution_path(args.lab)
    profile = args.profile or env.profile()
    print(f"Running {path} in the {profile} profile ...", flush=True)
    report_file = targets.results_dir() / f"{args.lab}.json"
    report_file.unlink(missing_ok=True)  # so that a report shown below is this run's
    start = time.perf_counter()
    try:
        notebooks.execute(path, profile=profile, timeout=args.timeout)
        failed = None
    except Exception as err:  # nbclient raises CellExecutionError carrying the cell's traceback
        failed = err
    wall = time.perf_counter() - start
    if report_file.is_file():
        print(targets.format_result(json.loads(report_file.read_text())))
        print(f"results: {report_file}")
    print(f"wall time: {wall:.0f} s")
    if failed is not None:
        print(f"\nThe notebook stopped with an error:\n{str(failed)[-3000:]}", file=sys.stderr)
        return 1
    return 0


def cmd_workspace(args) -> int:
    added, kept = workspace.fill()
    where = workspace.root()
    for name in workspace.install_pages():
        print(f"page     {where / name}")
    for name in added:
        print(f"added    {where / name}")
    if kept:
        print(f"kept     {len(kept)} notebook(s) already in {where} (your work; never overwritten)")
    if not added and not kept:
        print(f"no lab notebooks to copy into {where}")
    return 0


def cmd_reset(args) -> int:
    moved, fresh = workspace.reset(args.lab)
    if moved:
        print(f"Your previous copy is kept at {moved}")
    print(f"Fresh copy: {fresh}")
    return 0


def _notebook_path(name: str) -> Path:
    """A path as given, or a lab id / notebook name looked up in the workspace."""
    path = Path(name)
    if path.is_file() or path.suffix == ".ipynb" or "/" in name:
        return path
    return workspace.root() / workspace.notebook_name(name)


def _show_progress(i: int, n: int, cell_index: int, line: str, elapsed: float) -> None:
    minutes, seconds = divmod(int(elapsed), 60)
    print(f"  [{i:>2}/{n}] {minutes:d}:{seconds:02d}  cell {cell_index + 1}: {line}", flush=True)


def _attempt(lab_id: str, path: Path, profile: str, grade) -> dict:
    report = grade.report or {}
    targets_ = {metric: {"target": spec, "value": report.get("metrics", {}).get(metric),
                         "met": bool(report.get("passes", {}).get(metric))}
                for metric, spec in report.get("targets", {}).items()}
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "lab": lab_id, "notebook": str(path), "profile": profile,
            "passed": grade.passed, "todos": grade.todos, "exercises": grade.exercises, "targets": targets_,
            "errors": grade.errors, "wall_time_s": round(grade.wall_time_s, 1)}


def cmd_check(args) -> int:
    path = _notebook_path(args.notebook)
    if not path.is_file():
        print(f"No notebook at {path}.", file=sys.stderr)
        return 2
    lab_id = args.lab or path.stem
    try:
        targets.lab(lab_id)
    except targets.UnknownLab as err:
        raise targets.UnknownLab(f"{err} Name the lab with --lab when the notebook was renamed.") from None
    profile = args.profile or env.profile()
    print(f"Grading {path} in the {profile} profile ...", flush=True)
    grade = notebooks.grade(path, lab_id, profile=profile, timeout=args.timeout, progress=_show_progress)
    saved = workspace.record_attempt(lab_id, _attempt(lab_id, path, profile, grade))
    if grade.todos:
        print(f"{path.name} is not finished yet: {len(grade.todos)} TODO(s) left.")
        for todo in grade.todos:
            print(f"  - {todo}")
        print("Finish them, then run `labkit check` again.")
        print(f"attempt recorded in {saved}")
        return 1
    print(f"Graded {path.name} in {grade.wall_time_s:.0f} s")
    for name, verdict in grade.exercises.items():
        print(f"  exercise {name}: {'passed' if verdict == 'passed' else 'NOT YET - ' + verdict}")
    for error in grade.errors:
        print(f"  error in {error}")
    if grade.report:
        for metric, spec in grade.report["targets"].items():
            value = grade.report["metrics"].get(metric)
            met = grade.report["passes"][metric]
            print(f"  target {metric} {spec}: {value if value is None else round(value, 4)} {'met' if met else 'MISSED'}")
    else:
        print("  the report cell did not run, so no target could be graded")
    print("PASSED" if grade.passed else "NOT PASSED YET")
    print(f"attempt recorded in {saved} (`labkit progress` shows every lab)")
    return 0 if grade.passed else 1


def cmd_progress(args) -> int:
    rows = []
    for row in workspace.progress():
        last = row["last"]
        if not row["in_workspace"]:
            state = "not started"
        elif last is None:
            state = "not checked yet"
        elif last.get("todos"):
            state = f"{len(last['todos'])} TODO(s) left"
        else:
            state = "PASSED" if last["passed"] else "not passed yet"
        exercises = targets_met = "-"
        if last and not last.get("todos"):
            ex = last.get("exercises", {})
            exercises = f"{sum(v == 'passed' for v in ex.values())}/{len(ex)}"
            tg = last.get("targets", {})
            targets_met = f"{sum(t['met'] for t in tg.values())}/{len(tg)}" if tg else "-"
        todos = "-" if row["todos"] is None else str(row["todos"])
        rows.append((row["lab"], row["title"], todos, str(row["attempts"]), state, exercises, targets_met,
                     "yes" if row["passed_ever"] else "no", last["time"] if last else "-"))
    print(f"workspace: {workspace.root()}")
    print(format_table(("lab", "title", "TODOs", "attempts", "last check", "exercises", "targets", "ever passed",
                        "when"), rows))
    return 0


def cmd_jupyter_config(args) -> int:
    for path in workspace.configure_jupyter(args.prefix):
        print(f"wrote    {path}")
    return 0


def cmd_grade(args) -> int:
    from . import grading

    targets.lab(args.lab)
    profile = args.profile or env.profile()
    out = args.out or Path("grades") / args.lab
    print(f"Grading the notebooks in {args.submissions} as lab {args.lab} ({profile} profile), {args.jobs} at a "
          f"time, limits: {args.timeout or 'default'} s and {args.memory_mb} MB each ...", flush=True)

    def show(i, n, r):
        what = r.error or f"{r.score:g}/{r.max_score:g}"
        print(f"  [{i}/{n}] {r.student}: {what} ({r.wall_time_s:.0f} s)", flush=True)

    try:
        results = grading.grade_class(Path(args.submissions), args.lab, profile, jobs=args.jobs,
                                      timeout_s=args.timeout, memory_mb=args.memory_mb, out_dir=out, progress=show)
    except FileNotFoundError as err:
        print(f"labkit: {err}", file=sys.stderr)
        return 2
    print(f"gradebook: {out / 'gradebook.csv'}; feedback per student: {out / 'feedback'}")
    print(f"{len(results)} notebook(s), {sum(bool(r.error) for r in results)} given zero for a crash, time-out or memory")
    return 0


def cmd_interview(args) -> int:
    import random

    from . import interview, threats

    if args.map:
        rows = threats.terminal_rows(course.labs())
        print(format_table(("STRIDE", "ATLAS", "OWASP", "attack", "lab", "control", "metric", "target", "yours"), rows))
        return 0
    questions = interview.collect()
    if args.topic:
        questions = [q for q in questions if q.topic == args.topic]
    if args.list:
        for topic, items in interview.by_topic(questions).items():
            for q in items:
                print(f"[{topic}] {q.lab.number} Q{q.number}: {q.text}")
        print(f"{len(questions)} question(s); the page: labs/INTERVIEW.md")
        return 0
    print(f"Interview practice: {len(questions)} question(s). Answer aloud, then press Enter. q quits.")
    asked = interview.practice(questions, rng=random.Random(args.seed), count=args.count)
    print(f"\n{asked} question(s) practised. All of them, by topic: labs/INTERVIEW.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description="ML Security Lab Kit: labs, data and grading.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="versions, device, profile, data present and verified").set_defaults(func=cmd_doctor)
    sub.add_parser("list", help="the lab catalogue").set_defaults(func=cmd_list)
    data = sub.add_parser("data", help="verify or fetch datasets")
    data.add_argument("action", choices=["verify", "fetch"])
    data.add_argument("names", nargs="*", help="datasets (default: all)")
    data.set_defaults(func=cmd_data)
    build = sub.add_parser("build", help="generate labs/ from solutions/")
    build.add_argument("--check", action="store_true", help="change nothing; exit 1 naming every stale lab")
    build.set_defaults(func=cmd_build)
    course_ = sub.add_parser("course", help="regenerate the course pages (labs/*.md) and the README catalogue")
    course_.add_argument("--check", action="store_true", help="change nothing; exit 1 when a page is stale")
    course_.set_defaults(func=cmd_course)
    wordnet = sub.add_parser("build-wordnet", help="build data/nltk/wordnet-3.0.zip from Debian's wordnet-base "
                             "package (`apt-get download wordnet-base`)")
    wordnet.add_argument("source", help="the wordnet-base .deb, or a folder it was unpacked into with dpkg -x")
    wordnet.add_argument("--out", default="data/nltk/wordnet-3.0.zip")
    wordnet.set_defaults(func=cmd_build_wordnet)
    run = sub.add_parser("run", help="execute a lab's solution and print its report")
    run.add_argument("lab")
    run.add_argument("--profile", choices=env.PROFILES)
    run.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    run.set_defaults(func=cmd_run)
    sub.add_parser("workspace", help="copy labs that are missing into your workspace (never overwrites)"
                   ).set_defaults(func=cmd_workspace)
    reset = sub.add_parser("reset", help="move your copy of a lab aside and start from a fresh one")
    reset.add_argument("lab", help="lab id, e.g. 01_fgsm_mnist")
    reset.set_defaults(func=cmd_reset)
    sub.add_parser("progress", help="where you stand in every lab").set_defaults(func=cmd_progress)
    sub.add_parser("pretrain", help="train a CIFAR-10 ResNet like the kit's shipped weights (see `labkit pretrain -h`)",
                   add_help=False)
    check = sub.add_parser("check", help="execute a learner's notebook and grade it")
    check.add_argument("notebook", help="a notebook path, or a lab id (its copy in your workspace)")
    check.add_argument("--lab", help="lab id (default: the notebook's file name)")
    check.add_argument("--profile", choices=env.PROFILES)
    check.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    check.set_defaults(func=cmd_check)
    grade = sub.add_parser("grade", help="grade a folder of learner notebooks into a gradebook CSV and feedback")
    grade.add_argument("submissions", help="a folder of notebooks (one per student) or of one folder per student")
    grade.add_argument("--lab", required=True, help="lab id, e.g. 01_fgsm_mnist")
    grade.add_argument("-j", "--jobs", type=int, default=1, help="notebooks graded at the same time")
    grade.add_argument("--timeout", type=float, help="seconds per notebook (default: 4x the lab's time, 5 min at least)")
    grade.add_argument("--memory-mb", type=float, default=4096, help="resident memory per notebook, kernel included")
    grade.add_argument("--profile", choices=env.PROFILES)
    grade.add_argument("--out", type=Path, help="where gradebook.csv and feedback/ go (default grades/LAB)")
    grade.set_defaults(func=cmd_grade)
    interview = sub.add_parser("interview", help="practise the labs' interview questions in the terminal")
    interview.add_argument("--topic", help="only this topic (threat modelling, evasion, privacy, ...)")
    interview.add_argument("--count", type=int, help="questions to ask (default: all, in random order)")
    interview.add_argument("--seed", type=int, help="the random order (default: a new one each time)")
    interview.add_argument("--list", action="store_true", help="list the questions by topic instead")
    interview.add_argument("--map", action="store_true", help="the threat-model map, with your measured results")
    interview.set_defaults(func=cmd_interview)
    jupyter = sub.add_parser("jupyter-config", help="quiet JupyterLab start-up for the kit (make lab runs it)")
    jupyter.add_argument("--prefix", type=Path, help="the environment to configure (default: this one)")
    jupyter.set_defaults(func=cmd_jupyter_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pretrain"]:  # its own parser: `labkit pretrain --help` lists the training options
        from . import pretrain

        try:
            return pretrain.main(argv[1:])
        except datasets.DatasetError as err:
            print(f"labkit: {err}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (datasets.DatasetError, targets.UnknownLab, env.ProfileError, notebooks.NotebookBuildError,
            course.CourseError) as err:
        print(f"labkit: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
