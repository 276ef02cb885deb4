"""labkit.check.sanitiser: a correct sanitiser passes; each typical mistake fails with a sentence that names it."""
import re
import unicodedata

import pytest

from labkit import check
from labkit.check.common import TODO_MESSAGE
from labkit.text_defences import HOMOGLYPHS, sanitise, spell_checker

LEET = {"0": "o", "1": "il", "3": "e", "4": "a", "5": "s", "7": "t"}


def _fold(text, strip_non_ascii=False, invisible_to_space=False, homoglyphs=True):
    if strip_non_ascii:
        text = text.encode("ascii", "ignore").decode()
    if invisible_to_space:
        text = re.sub("[\u200b\u200d\u2060]", " ", text)
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    if homoglyphs:
        text = "".join(HOMOGLYPHS.get(ch, ch) for ch in text)
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")


def _deleet(word, known, digits_too=False):
    if (not digits_too and not any(c.isalpha() for c in word)) or word.lower() in known:
        return word
    readings = [""]
    for c in word.lower():
        readings = [r + x for r in readings for x in LEET.get(c, c)]
    return next((r for r in readings if r in known), readings[0] if digits_too else word)


def learner(text, known, *, strip=False, spaces=False, homoglyphs=True, leet_digits=False, use_known=True,
            correct=True):
    """A learner's sanitiser, written without the kit's reference; the flags plant one mistake each."""
    text = _fold(text, strip, spaces, homoglyphs)
    text = re.sub(r"[A-Za-z0-9]+", lambda m: _deleet(m.group(0), known, leet_digits), text)
    if not correct:
        return text
    checker = spell_checker()
    dictionary = known if use_known else set(checker.word_frequency.dictionary)

    def fix(m):
        w = m.group(0)
        if len(w) < 3 or w.lower() in dictionary:
            return w
        return checker.correction(w.lower()) or w

    return re.sub(r"[A-Za-z]+", fix, text)


def test_a_correct_sanitiser_passes():
    assert check.sanitiser(learner).passed


def test_the_reference_itself_is_refused():
    with pytest.raises(check.ExerciseFailed, match="kit's own answer"):
        check.sanitiser(lambda text, known: sanitise(text, known=known))


@pytest.mark.parametrize("mistake, fn, words", [
    ("lower-casing only", lambda t, k: t.lower(), ["lower-casing", "homoglyphs"]),
    ("lower-casing plus spelling, no homoglyph map",
     lambda t, k: learner(t.lower(), k, homoglyphs=False), ["lower-casing", "homoglyphs"]),
    ("spell checker corrects valid words", lambda t, k: learner(t, k, use_known=False), ["corrects' valid words", "known"]),
    ("strips all non-ASCII", lambda t, k: learner(t, k, strip=True), ["non-ASCII"]),
    ("invisible characters become spaces", lambda t, k: learner(t, k, spaces=True), ["spaces", "delete them"]),
    ("leetspeak applied to phone numbers", lambda t, k: learner(t, k, leet_digits=True), ["phone number", "digit-only"]),
    ("no spell correction", lambda t, k: learner(t, k, correct=False), ["spell-correct"]),
    ("forgot return", lambda t, k: None, ["return"]),
    ("returns a token list", lambda t, k: t.split(), ["str"]),
    ("still TODO", lambda t, k: (_ for _ in ()).throw(NotImplementedError), [TODO_MESSAGE[:20]]),
    ("wrong signature", lambda t: t, ["signature"]),
])
def test_each_typical_mistake_is_named(mistake, fn, words):
    with pytest.raises(check.ExerciseFailed) as err:
        check.sanitiser(fn)
    for word in words:
        assert word in str(err.value), (mistake, str(err.value))


def test_strip_non_ascii_alone_is_named_on_the_price():
    # a sanitiser that only strips non-ASCII (after a correct homoglyph map) loses the pound sign
    def only_strip_after_map(t, k):
        return learner(_fold(t).encode("ascii", "ignore").decode(), k)

    with pytest.raises(check.ExerciseFailed, match="pound sign"):
        check.sanitiser(only_strip_after_map)
