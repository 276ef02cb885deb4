"""Progressive hints: `check.hint("fgsm")` shows hint 1, then 2, then 3 on each call.

The hints are written in the solution notebook next to the answer (`# HINT:` lines inside the
solution block); `labkit build` keeps them in the learner notebook's metadata. This looks for them
in the notebooks of the folder the kernel runs in (the learner's own copy), then in the kit's labs/.
"""
from __future__ import annotations

import json
from pathlib import Path

_shown: dict[str, int] = {}


def _notebooks() -> list[Path]:
    from ..notebooks import labs_dir

    found = sorted(Path.cwd().glob("*.ipynb"))
    try:
        found += sorted(labs_dir().glob("*.ipynb"))
    except OSError:
        pass
    return found


def all_hints(places: list[Path] | None = None) -> dict[str, list[str]]:
    """{exercise: hints} from the first notebook that carries each exercise's hints."""
    hints: dict[str, list[str]] = {}
    for path in places if places is not None else _notebooks():
        try:
            meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
        except (OSError, ValueError):
            continue  # a notebook being saved, or not JSON: not ours to judge here
        for name, texts in meta.get("labkit", {}).get("hints", {}).items():
            hints.setdefault(name, list(texts))
    return hints


def hint(exercise: str, number: int | None = None, places: list[Path] | None = None) -> None:
    """Print the next hint for `exercise` (or hint `number`); nothing is returned, so Jupyter shows it once."""
    hints = all_hints(places)
    if exercise not in hints:
        known = ", ".join(f'"{name}"' for name in sorted(hints)) or "none found"
        raise KeyError(f'No hints for "{exercise}". Exercises with hints here: {known}. '
                       "Use the name in the exercise's check call, e.g. check.hint(\"fgsm\") for check.fgsm(...).")
    texts = hints[exercise]
    if number is None:
        number = min(_shown.get(exercise, 0) + 1, len(texts))
    if not 1 <= number <= len(texts):
        raise ValueError(f'"{exercise}" has hints 1 to {len(texts)}; you asked for hint {number}.')
    _shown[exercise] = max(_shown.get(exercise, 0), number)
    text = f"Hint {number} of {len(texts)} for {exercise}: {texts[number - 1]}"
    if number == len(texts):
        text += ("\n(That was the last hint. Still stuck? Re-read the exercise's steps, run the check for its "
                 "sentence, or ask your instructor.)")
    else:
        text += f'\n(Run check.hint("{exercise}") again for hint {number + 1}.)'
    print(text)
