"""The interview track: every lab's interview corner collected and grouped by topic, a generated
page, and a practice mode for the terminal (a random question, the answer strategy on Enter, and
the lab that backs it with its numbers).

A corner is a markdown cell with the heading `## Interview corner` and questions written as
`**Q1. The question?**` followed by `*Strategy:* ...`. A question belongs to its lab's
`interview_topic`; `<!-- topic: serving -->` in its strategy moves it to another topic.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from . import targets

HEADING = re.compile(r"^##\s+Interview corner\s*$", re.MULTILINE)
QUESTION = re.compile(r"\*\*Q(?P<number>\d+)\.\s*(?P<text>.+?)\*\*", re.DOTALL)
TOPIC = re.compile(r"<!--\s*topic:\s*(?P<topic>[^>]+?)\s*-->")


@dataclass
class Question:
    lab: object  # course.Lab
    number: int
    text: str
    strategy: str
    topic: str


def corner(text: str) -> str | None:
    """The interview corner of a notebook's markdown (up to the next `## ` heading), or None."""
    found = HEADING.search(text)
    if not found:
        return None
    rest = text[found.end():]
    following = re.search(r"^## ", rest, re.MULTILINE)
    return rest[: following.start()] if following else rest


def parse(text: str, default_topic: str | None) -> list[tuple[int, str, str, str | None]]:
    """(number, question, strategy, topic) of each question in a corner's text."""
    matches = list(QUESTION.finditer(text))
    found = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        strategy = text[match.end(): end].strip()
        topic = TOPIC.search(strategy)
        strategy = TOPIC.sub("", strategy).strip()
        strategy = re.sub(r"^\*Strategy:\*\s*", "", strategy)
        found.append((int(match.group("number")), " ".join(match.group("text").split()),
                      " ".join(strategy.split()), topic.group("topic") if topic else default_topic))
    return found


def questions_of(path: Path, lab) -> list[Question]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = corner(cell.source)
            if text is not None:
                return [Question(lab, n, q, s, t or "unsorted") for n, q, s, t in parse(text, lab.interview_topic)]
    return []


def collect(all_labs=None, solutions: Path | None = None) -> list[Question]:
    from . import course, notebooks

    all_labs = course.labs() if all_labs is None else all_labs
    solutions = solutions or notebooks.solutions_dir()
    found = []
    for lab in all_labs:
        path = solutions / lab.notebook
        if path.is_file():
            found += questions_of(path, lab)
    return found


def by_topic(questions: list[Question]) -> dict[str, list[Question]]:
    from .course import TOPICS

    grouped = {topic: [] for topic in TOPICS}
    for question in questions:
        grouped.setdefault(question.topic, []).append(question)
    return grouped


def page(all_labs=None) -> str:
    questions = collect(all_labs)
    out = ["# Interview questions, by topic", "",
           "Every lab ends with an interview corner: questions asked in ML-security interviews, each with an answer",
           "strategy, backed by what the lab measured. Collected here by topic; `labkit interview` asks them at",
           "random in a terminal. For \"walk me through threat-modelling an ML system\", use the",
           "[threat-model map](THREATS.md). Back to the [start page](START.md).", ""]
    counts = ", ".join(f"{topic} {len(items)}" for topic, items in by_topic(questions).items())
    out += [f"Questions per topic: {counts}.", ""]
    for topic, items in by_topic(questions).items():
        out += [f"## {topic.capitalize()}", ""]
        if not items:
            out += ["*Coming with the labs on this topic.*", ""]
        for q in items:
            out += [f"**{q.text}** *(lab [{q.lab.number}]({q.lab.notebook}), Q{q.number})*", "",
                    f"*Strategy:* {q.strategy}", ""]
    out += ["*Generated from the labs' interview corners (`labkit course`).*", ""]
    return "\n".join(out)


def evidence(lab, limit: int = 4) -> list[str]:
    """Lines naming the numbers behind a lab: its threat rows' metrics first, then its other targets;
    the value measured here (results/<lab>.json) where the lab has been run, else its targets."""
    from .threats import measured, target_text

    entry = targets.catalogue()[lab.id]
    metrics = [row["metric"] for row in lab.threats]
    for table in entry.get("targets", {}).values():
        metrics += [m for m in table if m not in metrics]
    lines = []
    for metric in metrics[:limit]:
        value = measured(lab.id, metric)
        got = f"measured {value[0]:.4g} ({value[1]} profile, your results/)" if value else "not run here yet"
        lines.append(f"  {metric}: {got}; target {target_text(entry, metric)}")
    return lines


def practice(questions: list[Question], ask=input, say=print, rng: random.Random | None = None,
             count: int | None = None) -> int:
    """Ask random questions until `count` are done, the learner types q, or input ends. Returns the number asked."""
    if not questions:
        say("No interview questions found.")
        return 0
    rng = rng or random.Random()
    order = rng.sample(questions, len(questions))
    asked = 0
    for q in order[: count or len(order)]:
        asked += 1
        say(f"\n[{q.topic}] Q: {q.text}")
        try:
            if ask("  (think, then press Enter for the strategy; q to quit) ").strip().lower() == "q":
                break
        except EOFError:
            break
        say(f"Strategy: {q.strategy}")
        say(f"Backed by lab {q.lab.number} · {q.lab.title}:")
        for line in evidence(q.lab):
            say(line)
        if asked < len(order[: count or len(order)]):
            try:
                if ask("  (Enter for the next question; q to quit) ").strip().lower() == "q":
                    break
            except EOFError:
                break
    return asked
