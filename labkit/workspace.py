"""The learner's workspace: their own copies of the labs, which nothing in the kit overwrites.

`labs/` is generated and `labkit build` may rewrite it at any time; learners work in
`workspace/` (git-ignored), which `fill` stocks from `labs/` by adding labs that are missing and
never replacing a file. `reset` moves a learner's copy aside into `workspace/previous/` and puts a
fresh one in its place. Every `labkit check` appends its result to `workspace/attempts/<lab>.jsonl`,
which `labkit progress` reads back.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from . import targets

WORKSPACE_ENV = "LABKIT_WORKSPACE"


def root() -> Path:
    """The workspace folder: $LABKIT_WORKSPACE, else workspace/ beside labs/ in the checkout."""
    if os.environ.get(WORKSPACE_ENV):
        return Path(os.environ[WORKSPACE_ENV])
    return (targets.repo_root() or Path.cwd()) / "workspace"


def _labs_dir() -> Path:
    return (targets.repo_root() or Path.cwd()) / "labs"


def fill(labs: Path | None = None, workspace: Path | None = None) -> tuple[list[str], list[str]]:
    """Copy every lab notebook that the workspace lacks; never touch one it has.
    Returns (names added, names already there)."""
    labs, workspace = labs or _labs_dir(), workspace or root()
    workspace.mkdir(parents=True, exist_ok=True)
    added, kept = [], []
    for source in sorted(labs.glob("*.ipynb")):
        (added if _copy_if_absent(source, workspace / source.name) else kept).append(source.name)
    return added, kept


def _copy_if_absent(source: Path, target: Path) -> bool:
    """Copy source to target unless target exists; True when copied. Exclusive creation ("x"), so
    a race between two runs cannot overwrite a learner's file either."""
    try:
        with open(target, "xb") as f:
            f.write(source.read_bytes())
    except FileExistsError:
        return False
    return True


def _aside(workspace: Path, stem: str, tag: str) -> Path:
    """A name in workspace/previous/ that no file has yet: <stem>.<tag><time>[-n].ipynb."""
    previous = workspace / "previous"
    previous.mkdir(parents=True, exist_ok=True)
    stamp = f"{tag}{time.strftime('%Y%m%d-%H%M%S')}"
    moved, n = previous / f"{stem}.{stamp}.ipynb", 1
    while moved.exists():
        n += 1
        moved = previous / f"{stem}.{stamp}-{n}.ipynb"
    return moved


def notebook_name(lab: str) -> str:
    """A lab id from the catalogue, or a notebook file name, as the notebook's file name."""
    try:
        return targets.lab(lab)["notebook"]
    except targets.UnknownLab:
        name = Path(lab).name
        return name if name.endswith(".ipynb") else f"{name}.ipynb"


def reset(lab: str, labs: Path | None = None, workspace: Path | None = None) -> tuple[Path | None, Path]:
    """Move the learner's copy of `lab` into workspace/previous/ (stamped with the time, never
    overwriting) and copy a fresh one from labs/. Returns (where the old copy went, the fresh copy)."""
    labs, workspace = labs or _labs_dir(), workspace or root()
    name = notebook_name(lab)
    source = labs / name
    if not source.is_file():
        known = ", ".join(p.stem for p in sorted(labs.glob("*.ipynb")))
        raise targets.UnknownLab(f"No lab notebook {source}; the labs are: {known}.")
    current = workspace / name
    moved = None
    if current.exists():
        moved = _aside(workspace, current.stem, "")
        current.rename(moved)
    workspace.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, current)
    return moved, current


# ---- attempts ---------------------------------------------------------------------------------

def attempts_file(lab_id: str, workspace: Path | None = None) -> Path:
    return (workspace or root()) / "attempts" / f"{lab_id}.jsonl"


def record_attempt(lab_id: str, attempt: dict, workspace: Path | None = None) -> Path:
    path = attempts_file(lab_id, workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(attempt, default=str) + "\n")
    return path


def attempts(lab_id: str, workspace: Path | None = None) -> list[dict]:
    return read_json_lines(attempts_file(lab_id, workspace))


def read_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file, [] when it is missing; a line cut short by an
    interrupted run is skipped."""
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def progress(workspace: Path | None = None) -> list[dict]:
    """Where the learner stands in each catalogued lab: copied or not, TODOs left, attempts, last result."""
    from .notebooks import find_todos

    import nbformat

    workspace = workspace or root()
    rows = []
    for lab_id, entry in targets.catalogue().items():
        path = workspace / entry["notebook"]
        todos = None
        if path.is_file():
            try:
                todos = len(find_todos(nbformat.read(path, as_version=4)))
            except Exception:  # noqa: BLE001 - a notebook the learner broke still gets a row
                todos = None
        tries = attempts(lab_id, workspace)
        last = tries[-1] if tries else None
        rows.append({"lab": lab_id, "title": entry["title"], "in_workspace": path.is_file(), "todos": todos,
                     "attempts": len(tries), "passed_ever": any(t.get("passed") for t in tries), "last": last})
    return rows


# ---- work done in labs/ under an older kit -------------------------------------------------


def _committed(path: Path) -> bool:
    """True when git says the file is exactly as committed (then nobody worked in it)."""
    import subprocess

    try:
        done = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path.name], cwd=path.parent,
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and subprocess.run(
        ["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent, capture_output=True).returncode == 0


def rescue_edited_labs(planned: dict[str, str], labs: Path | None = None, workspace: Path | None = None) -> list[Path]:
    """Before `labkit build` rewrites labs/, keep a copy of every lab notebook someone worked in
    (fewer TODOs left than the fresh version has): learners of older kits worked in labs/.
    The copy goes to workspace/previous/, and to the workspace itself if it has no copy yet."""
    import nbformat

    from .notebooks import find_todos

    labs, workspace = labs or _labs_dir(), workspace or root()
    kept = []
    for name, text in planned.items():
        current = labs / name
        if not current.is_file() or current.read_text() == text:
            continue
        try:
            worked = len(find_todos(nbformat.read(current, as_version=4))) < len(find_todos(nbformat.reads(text, 4)))
        except Exception:  # noqa: BLE001 - an unreadable notebook is kept too, to be safe
            worked = True
        if not worked or _committed(current):
            continue
        copy = _aside(workspace, current.stem, "from-labs.")
        _copy_if_absent(current, copy)
        kept.append(copy)
        if _copy_if_absent(current, workspace / name):
            kept.append(workspace / name)
    return kept


# ---- the course pages and a quiet JupyterLab --------------------------------------------------

def install_pages(labs: Path | None = None, workspace: Path | None = None) -> list[str]:
    """Copy the generated course pages (labs/*.md: start page, glossary, interview, threat map) into
    the workspace, replacing an older copy: they are the kit's pages, regenerated from the catalogue,
    not the learner's work. Returns the names written."""
    labs, workspace = labs or _labs_dir(), workspace or root()
    workspace.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(labs.glob("*.md")):
        target = workspace / source.name
        text = source.read_text(encoding="utf-8")
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            written.append(source.name)
    return written


# JupyterLab for a learner: no news or update prompt (nothing reaches the network), the start page
# opened first and shown rendered, the kit's kernel started without asking.
SERVER_CONFIG = {
    "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
               "default_url": "/lab/tree/START.md"},
    "MappingKernelManager": {"default_kernel_name": "python3"},
}
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"markdown": "Markdown Preview"}},
    "@jupyterlab/notebook-extension:tracker": {"autoStartDefaultKernel": True},
}


def _merge_json(path: Path, wanted: dict) -> None:
    """Write `wanted` into a JSON settings file, keeping whatever else is already there."""
    current = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            current = {}
    for section, values in wanted.items():
        current.setdefault(section, {})
        if isinstance(current[section], dict):
            current[section].update(values)
        else:
            current[section] = dict(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def configure_jupyter(prefix: Path | None = None) -> list[Path]:
    """Write the quiet start-up settings into the environment's Jupyter folders (the kit's .venv):
    `etc/jupyter/jupyter_server_config.json` and JupyterLab's `share/jupyter/lab/settings/overrides.json`.
    Inside a virtual environment Jupyter reads these before the user's own, and the kernel spec named
    `python3` there is the kit's ("Python 3 (labkit)", installed by `make venv`)."""
    import sys

    prefix = Path(prefix or sys.prefix)
    server = prefix / "etc" / "jupyter" / "jupyter_server_config.json"
    overrides = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    _merge_json(server, SERVER_CONFIG)
    _merge_json(overrides, LAB_SETTINGS)
    return [server, overrides]
