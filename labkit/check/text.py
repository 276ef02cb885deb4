"""Check for the text-attack lab (04): the learner's input sanitiser, on fixed obfuscated messages.

`sanitise(text, known) -> str`, where `known` is the set of words to leave alone (the spell
checker's dictionary plus the model's vocabulary). Judged on what the model would see: the
output's tokens (`labkit.models.tokenize`: lower-case words, currency signs kept, long digit
runs folded) must equal those of the clean message.
"""
from __future__ import annotations

from typing import Callable

from .common import Feedback, call, fail

# Words of the bench's model vocabulary that a dictionary does not know (SMS slang, brands).
BENCH_VOCABULARY = ("txt", "ur", "wif", "lar", "oni", "nokia", "ringtone", "2nite", "4u", "msg", "xxx", "lol", "tmr")

# (what it tests, obfuscated input, the clean message)
CASES = (
    ("valid", "Ok lar... joking wif u oni, txt me 2nite when ur home", "Ok lar... joking wif u oni, txt me 2nite when ur home"),
    ("homoglyph", "\u0421lаim yоur prіze nоw", "Claim your prize now"),
    ("invisible", "fr\u200bee ent\u200dry to win\u2060 a nokia", "free entry to win a nokia"),
    ("leet", "w1n a fr33 c4sh pr1ze", "win a free cash prize"),
    ("numbers", "Call 08712460324 to claim £1000 cash, 150p/msg", "Call 08712460324 to claim £1000 cash, 150p/msg"),
    ("typo", "urgnet! you are a wnner, plesae call", "urgent! you are a winner, please call"),
    ("fullwidth", "ＦＲＥＥ ringtone, fréé entry", "FREE ringtone, free entry"),
)


def _tokens(text: str) -> list[str]:
    from ..models import tokenize

    return tokenize(text)


def _references():
    from .. import text_defences

    return [(text_defences.sanitise, "labkit.text_defences.sanitise"),
            (text_defences.Sanitiser.__call__, "labkit.text_defences.Sanitiser")]


def _diagnose(case: str, given: str, out: str, expected: str, known: set[str]) -> str:
    got, want, raw = _tokens(out), _tokens(expected), _tokens(given)
    lost_non_ascii = "£" in expected and "£" not in out
    if case == "numbers" and lost_non_ascii:
        return ("the pound sign of '£1000' is gone: you strip every non-ASCII character, which also deletes "
                "currency signs (a strong spam feature) and, in other messages, whole letters. Map or remove only "
                "what the attack uses (homoglyphs, invisible characters) and keep the rest.")
    if case == "numbers":
        return (f"the phone number or price changed ({given!r} became {out!r}): apply leetspeak only inside words "
                "that also contain letters; leave digit-only tokens (phone numbers, prices, codes) as they are.")
    if case == "valid":
        changed = [(a, b) for a, b in zip(raw, got) if a != b]
        example = f" ({changed[0][0]} -> {changed[0][1]})" if changed else ""
        return (f"a clean message changed{example}: your spell checker 'corrects' valid words. Correct only the "
                "words that are not in `known` (the dictionary PLUS the model's own vocabulary, which holds SMS "
                "words like 'txt' and 'ur'), so clean messages reach the model unchanged.")
    if case == "homoglyph":
        if got == raw or out.strip().lower() == given.strip().lower():
            return ("the Cyrillic letters are still there (lower-casing changes case, not script: 'а' U+0430 is not "
                    "'a'): map homoglyphs to their Latin letters (e.g. with labkit.text_defences.HOMOGLYPHS) "
                    "before anything else.")
        if any(len(g) < len(w) for g, w in zip(got, want)):
            return (f"letters vanished ({out!r}): you strip non-ASCII characters, which deletes the Cyrillic "
                    "look-alikes instead of reading them; map each homoglyph to its Latin letter.")
    if case == "invisible":
        if len(got) > len(want):
            return ("a word was split in two ('fr ee'): you replace invisible characters with spaces; delete them "
                    "(zero-width space U+200B, joiner U+200D, word joiner U+2060, soft hyphen ...).")
        return (f"{out!r} still differs from {expected!r}: delete zero-width and other invisible characters "
                "(unicodedata.category(ch) == 'Cf').")
    if case == "leet":
        return (f"{out!r} is not {expected!r}: read leetspeak inside words (1 -> i or l, 3 -> e, 4 -> a, 0 -> o, "
                "5 -> s ...), keeping the reading that is a known word.")
    if case == "typo":
        if got == raw:
            return ("misspelled words came through unchanged: spell-correct the words that are not in `known` "
                    "(e.g. spellchecker.SpellChecker().correction(word)).")
        return (f"{out!r} is not {expected!r}: correct each unknown word to the dictionary's best candidate.")
    if case == "fullwidth":
        if not got:
            return ("nothing is left of a full-width and accented message: you strip non-ASCII characters; fold "
                    "them instead (unicodedata.normalize('NFKC', text), then drop combining accents after NFD).")
        return (f"{out!r} is not {expected!r}: normalise with unicodedata.normalize('NFKC', ...) (full-width letters) "
                "and drop combining accents (NFD, remove category 'Mn').")
    return f"for {given!r} you returned {out!r}; the model should see {expected!r}."


def sanitiser(fn: Callable) -> Feedback:
    """fn(text, known) -> str: fold homoglyphs, invisible characters, full-width letters and accents,
    read leetspeak inside words, spell-correct unknown words, and leave valid words, numbers and
    currency signs alone."""
    exercise = "sanitiser"
    expected_call = "sanitise(text, known)"
    from ..text_defences import known_words

    known = known_words(BENCH_VOCABULARY)
    for case, given, expected in CASES:
        out = call(exercise, fn, (given, known), expected_call, _references())
        if not isinstance(out, str):
            fail(exercise, f"returned {type(out).__name__} for {given!r}; return the cleaned message as a str "
                 "(did you forget `return`?).")
        if _tokens(out) != _tokens(expected):
            fail(exercise, _diagnose(case, given, out, expected, known))
    return Feedback(exercise, True, "reads homoglyphs, invisible characters, full-width letters, accents, leetspeak "
                    "and typos back into the words the model knows, and leaves valid words, phone numbers and "
                    "prices unchanged.").show()


__all__ = ["sanitiser", "CASES", "BENCH_VOCABULARY"]
