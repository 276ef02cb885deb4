"""`labkit interview`: every lab's interview corner collected by topic, the generated page, practice mode."""
import random
import re
from pathlib import Path

import nbformat
import pytest

from labkit import cli, course, interview, targets

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = targets.catalogue()


@pytest.mark.parametrize("lab_id", list(CATALOGUE))
def test_every_question_of_every_corner_is_collected(lab_id):
    entry = CATALOGUE[lab_id]
    nb = nbformat.read(ROOT / "solutions" / entry["notebook"], as_version=4)
    corners = [interview.corner(c.source) for c in nb.cells if c.cell_type == "markdown"]
    corners = [c for c in corners if c is not None]
    if not corners:
        pytest.skip(f"{lab_id} has no interview corner yet (a warning of `labkit course --check`)")
    written = len(re.findall(r"\*\*Q\d+\.", corners[0]))
    lab = next(lab for lab in course.labs() if lab.id == lab_id)
    found = interview.questions_of(ROOT / "solutions" / entry["notebook"], lab)
    assert len(found) == written > 0
    assert all(q.text and q.strategy for q in found)
    page = (ROOT / "labs" / "INTERVIEW.md").read_text()
    for q in found:
        assert f"**{q.text}** *(lab [{lab.number}]({lab.notebook}), Q{q.number})*" in page


def test_questions_are_grouped_by_topic_with_per_question_overrides():
    text = ("## Interview corner\n\n**Q1. Walk me\nthrough it?**\n*Strategy:* use STRIDE. <!-- topic: threat modelling -->\n\n"
            "**Q2. Why hash keys?**\n*Strategy:* leaks.\n\n## Next section\n**Q9. Not a question of the corner**")
    found = interview.parse(interview.corner(text), "serving")
    assert found == [(1, "Walk me through it?", "use STRIDE.", "threat modelling"), (2, "Why hash keys?", "leaks.", "serving")]
    grouped = interview.by_topic(interview.collect())
    assert list(grouped)[: len(course.TOPICS)] == list(course.TOPICS)
    assert any(q.lab.id == "07_api_hardening" for q in grouped["threat modelling"])


def test_practice_asks_then_shows_the_strategy_and_the_lab_behind_it():
    questions = interview.collect()
    said, answers = [], iter(["", "", "", "q"])
    asked = interview.practice(questions, ask=lambda prompt: next(answers), say=said.append,
                               rng=random.Random(0), count=5)
    assert asked == 2  # quit at the second "next question" prompt
    text = "\n".join(said)
    assert text.count("Q: ") == 2 and text.count("Strategy: ") == 2 and "Backed by lab" in text
    assert "target" in text  # the numbers the lab is held to (and the measured ones once it has run)


def test_practice_ends_quietly_when_input_ends():
    def closed(prompt):
        raise EOFError

    assert interview.practice(interview.collect(), ask=closed, say=lambda s: None, count=3) == 1


def test_the_interview_command_lists_and_maps(capsys):
    assert cli.main(["interview", "--list", "--topic", "privacy"]) == 0
    out = capsys.readouterr().out
    assert "[privacy]" in out and "[evasion]" not in out
    assert cli.main(["interview", "--map"]) == 0
    out = capsys.readouterr().out
    assert "STRIDE" in out and "AML.T" in out
