"""The `labkit` command: doctor, list, data, build, run, check."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from . import datasets, env, notebooks, targets

KEY_PACKAGES = ["torch", "numpy", "tensorflow-cpu", "tf-keras", "tensorflow-privacy", "opacus", "cleverhans",
                "adversarial-robustness-toolbox", "scikit-learn", "textattack", "flwr", "fastapi", "uvicorn",
                "jupyterlab", "nbval", "pooch"]


def _print_table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_doctor(args) -> int:
    problems = 0
    print(f"labkit {metadata.version('labkit')} on Python {platform.python_version()} ({platform.system()} {platform.machine()})")
    try:
        print(f"profile: {env.profile()}")
    except env.ProfileError as err:
        print(f"profile: ERROR {err}")
        problems += 1
    print(f"device:  {env.device_name()}")
    print("\npackages:")
    rows = []
    for name in KEY_PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    _print_table(rows, ("package", "version"))
    print("\ndata (sha256 verified):")
    rows = []
    for name in datasets.names():
        for path, state, detail in datasets.status(name):
            optional = not datasets.info(name).get("shipped", True)
            if state != "ok" and not optional:
                problems += 1
            rows.append((name, path, state + (" (optional)" if optional and state != "ok" else ""),
                         detail if state == "ok" else detail.split(". ")[-1]))
    _print_table(rows, ("dataset", "file", "state", "where / fix"))
    if notebooks.solutions_dir().is_dir():
        stale = notebooks.build(check=True)
        print(f"\nlabs/: {'up to date' if not stale else 'STALE: ' + ', '.join(stale) + ' (run `labkit build`)'}")
        problems += bool(stale)
    print("\nall good" if not problems else f"\n{problems} problem(s) found")
    return 1 if problems else 0


def cmd_list(args) -> int:
    rows = []
    for lab_id, entry in targets.catalogue().items():
        minutes = entry.get("minutes", {})
        rows.append((lab_id, entry["level"], entry["title"], entry.get("topic", ""),
                     f"{minutes.get('quick', '?')} min", f"{minutes.get('full', '?')} min"))
    _print_table(rows, ("lab", "level", "title", "topic", "quick (CPU)", "full (GPU)"))
    return 0


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
                optional = not datasets.info(name).get("shipped", True)
                print(f"{state:<9}{name}: {detail}")
                failures += state != "ok" and not (optional and state == "missing" and not args.names)
    return 1 if failures else 0


def cmd_build(args) -> int:
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
    start = time.perf_counter()
    results = targets.results_dir()
    try:
        executed = notebooks.execute(path, profile=profile, timeout=args.timeout)
        failed = None
    except Exception as err:  # nbclient raises CellExecutionError carrying the cell's traceback
        executed, failed = None, err
    wall = time.perf_counter() - start
    report_file = results / f"{args.lab}.json"
    if report_file.is_file() and report_file.stat().st_mtime >= time.time() - wall - 1:
        report = json.loads(report_file.read_text())
        rows = [(m, report["targets"].get(m, "-"), f"{v:.4f}" if isinstance(v, float) else v,
                 "" if m not in report["targets"] else ("MISS" if any(s.startswith(m + " ") for s in report["missed"]) else "PASS"))
                for m, v in report["metrics"].items()]
        _print_table(rows, ("metric", "target", "achieved", "pass"))
        print(f"results: {report_file}")
    print(f"wall time: {wall:.0f} s")
    if failed is not None:
        print(f"\nThe notebook stopped with an error:\n{str(failed)[-3000:]}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args) -> int:
    path = Path(args.notebook)
    if not path.is_file():
        print(f"No notebook at {path}.", file=sys.stderr)
        return 2
    lab_id = args.lab or path.stem
    try:
        targets.lab(lab_id)
    except targets.UnknownLab as err:
        raise targets.UnknownLab(f"{err} Name the lab with --lab when the notebook was renamed.") from None
    grade = notebooks.grade(path, lab_id, profile=args.profile, timeout=args.timeout)
    if grade.todos:
        print(f"{path.name} is not finished yet: {len(grade.todos)} TODO(s) left.")
        for todo in grade.todos:
            print(f"  - {todo}")
        print("Finish them, then run `labkit check` again.")
        return 1
    print(f"Graded {path.name} in {grade.wall_time_s:.0f} s")
    for name, verdict in grade.exercises.items():
        print(f"  exercise {name}: {'passed' if verdict == 'passed' else 'NOT YET - ' + verdict}")
    for error in grade.errors:
        print(f"  error in {error}")
    if grade.report:
        for metric, spec in grade.report["targets"].items():
            value = grade.report["metrics"].get(metric)
            missed = any(s.startswith(metric + " ") for s in grade.report["missed"])
            print(f"  target {metric} {spec}: {value if value is None else round(value, 4)} {'MISSED' if missed else 'met'}")
    else:
        print("  the report cell did not run, so no target could be graded")
    print("PASSED" if grade.passed else "NOT PASSED YET")
    return 0 if grade.passed else 1


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
    run = sub.add_parser("run", help="execute a lab's solution and print its report")
    run.add_argument("lab")
    run.add_argument("--profile", choices=env.PROFILES)
    run.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="execute a learner's notebook and grade it")
    check.add_argument("notebook")
    check.add_argument("--lab", help="lab id (default: the notebook's file name)")
    check.add_argument("--profile", choices=env.PROFILES)
    check.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (datasets.DatasetError, targets.UnknownLab, env.ProfileError, notebooks.NotebookBuildError) as err:
        print(f"labkit: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
