"""Defences of a text classifier against obfuscated input: the character tables a sanitiser needs,
the kit's reference sanitiser (what `labkit.check.sanitiser` compares a learner's with), and a
runtime monitor that flags suspicious messages, calibrated on clean training messages.

Everything runs offline: the spell checker is pyspellchecker, whose English dictionary ships
inside its wheel.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from itertools import product
from typing import Iterable, Sequence

import numpy as np

# Letters from other scripts that look like Latin ones (Cyrillic, Greek, Armenian, Latin
# extensions). NFKC already folds full-width letters, ligatures and mathematical alphanumerics.
HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "ь": "b", "һ": "h", "ӏ": "l", "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O",
    "Р": "P", "С": "C", "Т": "T", "У": "Y", "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S", "Ԁ": "D", "Ԛ": "Q",
    "Ԝ": "W",
    # Greek
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "τ": "t", "υ": "u", "ι": "i", "κ": "k", "ϲ": "c", "ϳ": "j",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C",
    # Armenian and Latin extensions
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ɑ": "a", "ɡ": "g", "ı": "i", "ȷ": "j", "ⅼ": "l", "ⅰ": "i",
}
# Characters that render as nothing: zero-width space / joiners, word joiner, BOM, soft hyphen,
# invisible operators, Mongolian vowel separator. (unicodedata category Cf holds most of them.)
INVISIBLE = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e\u034f"
# Leetspeak digits and symbols inside words, each with the letters it may stand for (first = likeliest).
LEET = {"0": "o", "1": "il", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a", "$": "s",
        "!": "i", "|": "l"}

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?|[@$!|]", re.UNICODE)
_LEET_WORD = re.compile(r"[A-Za-z0-9@$!|]+")


@lru_cache(maxsize=1)
def spell_checker():
    """pyspellchecker's English dictionary (shipped in the wheel; nothing is downloaded)."""
    from spellchecker import SpellChecker

    return SpellChecker(language="en", distance=1)  # one edit: what a character attack makes per word; distance 2 is 100x slower


@lru_cache(maxsize=200_000)
def _correction(word: str) -> str | None:
    return spell_checker().correction(word)


def known_words(vocabulary: Iterable[str] = ()) -> set[str]:
    """The words a sanitiser must leave alone: the spell checker's dictionary plus the model's own
    vocabulary (SMS slang such as 'txt', 'ur', brand names)."""
    return set(spell_checker().word_frequency.dictionary) | {w.lower() for w in vocabulary}


def _fold(text: str) -> str:
    # homoglyphs before NFKC too: NFKC turns some look-alikes into other letters (lunate sigma 'Ϲ' -> 'Σ')
    text = unicodedata.normalize("NFKC", "".join(HOMOGLYPHS.get(ch, ch) for ch in text))
    text = "".join(HOMOGLYPHS.get(ch, ch) for ch in text if ch not in INVISIBLE and unicodedata.category(ch) != "Cf")
    # accents and other combining marks: decompose, drop the marks, recompose ("fréé" -> "free")
    text = "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")
    return unicodedata.normalize("NFC", text)


def _deleet(token: str, known: set[str]) -> str:
    """A token mixing letters with leet digits/symbols, read as the known word it spells, if any."""
    lower = token.lower()
    if not any(c.isalpha() for c in lower) or not any(c in LEET for c in lower) or lower in known:
        return token
    choices = [LEET.get(c, c) if c in LEET else c for c in lower]
    if np.prod([len(c) for c in choices]) > 64:
        return token
    for candidate in ("".join(p) for p in product(*choices)):
        if candidate in known:
            return candidate
    return token  # no reading is a known word: leave it ("2nite", codes) for the spell checker or the model


def sanitise(text: str, vocabulary: Iterable[str] = (), known: set[str] | None = None) -> str:
    """The kit's reference sanitiser: fold Unicode (NFKC, homoglyphs, invisible characters,
    accents), read leetspeak inside words, and spell-correct words that neither the dictionary nor
    the model's vocabulary knows. Digits-only tokens (phone numbers, prices) and currency signs stay."""
    if not isinstance(text, str):
        raise TypeError(f"sanitise expects a str; got {type(text).__name__}.")
    known = known if known is not None else known_words(vocabulary)
    text = _fold(text)
    text = _LEET_WORD.sub(lambda m: _deleet(m.group(0), known), text)
    def correct(match: re.Match) -> str:
        word = match.group(0)
        lower = word.lower()
        if not lower.isalpha() or lower in known or len(lower) < 3:
            return word
        return _correction(lower) or word

    return _WORD.sub(correct, text)


class Sanitiser:
    """sanitise() with the known-word set built once (a model's vocabulary is tens of thousands of words)."""

    def __init__(self, vocabulary: Iterable[str] = (), fn=None):
        self.known = known_words(vocabulary)
        self.fn = fn

    def __call__(self, text: str) -> str:
        if self.fn is not None:
            return self.fn(text, self.known)
        return sanitise(text, known=self.known)


# ----------------------------------------------------------------------------- runtime monitor
def suspicion_features(text: str, known: set[str]) -> np.ndarray:
    """Per message: share of words unknown to dictionary + vocabulary, share of words mixing letters
    with digits or leet symbols, count of non-ASCII letters, count of invisible characters."""
    words = [w for w in re.findall(r"[^\W_]+", text.lower()) if not w.isdigit()]
    n = max(len(words), 1)
    unknown = sum(w not in known for w in words if w.isascii() and w.isalpha())
    mixed = sum(any(c.isalpha() for c in w) and any(c.isdigit() for c in w) for w in words)
    mixed += len(re.findall(r"[A-Za-z][@$|][A-Za-z]", text))
    foreign = sum(1 for ch in text if ch.isalpha() and not ch.isascii() and ch not in "£€")
    invisible = sum(1 for ch in text if ch in INVISIBLE or unicodedata.category(ch) == "Cf")
    return np.array([unknown / n, mixed / n, foreign, invisible], dtype=np.float64)


class Monitor:
    """Flags a message when its suspicion score exceeds a threshold set on clean training messages
    so that at most `false_flag_rate` of them are flagged. Score: unknown-word share + 2 x
    mixed-word share + 1 per non-ASCII letter + 1 per invisible character."""

    WEIGHTS = np.array([1.0, 2.0, 1.0, 1.0])

    def __init__(self, vocabulary: Iterable[str], false_flag_rate: float = 0.02):
        if not 0 < false_flag_rate < 1:
            raise ValueError(f"false_flag_rate must lie in (0, 1); got {false_flag_rate}.")
        self.known = known_words(vocabulary)
        self.false_flag_rate = false_flag_rate
        self.threshold = None

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([suspicion_features(t, self.known) @ self.WEIGHTS for t in texts])

    def fit(self, clean_texts: Sequence[str]) -> "Monitor":
        scores = self.scores(clean_texts)
        self.threshold = float(np.quantile(scores, 1 - self.false_flag_rate, method="higher"))
        return self

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        if self.threshold is None:
            raise RuntimeError("Monitor.flags before fit: call monitor.fit(clean training messages) first.")
        return self.scores(texts) > self.threshold

    def flag_rate(self, texts: Sequence[str]) -> float:
        return float(self.flags(texts).mean()) if len(texts) else float("nan")


__all__ = ["HOMOGLYPHS", "INVISIBLE", "LEET", "spell_checker", "known_words", "sanitise", "Sanitiser",
           "suspicion_features", "Monitor"]
