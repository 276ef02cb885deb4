"""Attacking a text classifier with TextAttack, offline: the model wrapper, the recipes that run
with no network, one loop that attacks a fixed set of messages and summarises the results, the
coloured diff, and TextAttack's offline augmenters for adversarial training.

Importing this module calls `labkit.textattack_offline.prepare()` first, so TextAttack finds the
kit's WordNet and stopwords and never downloads.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import textattack_offline

textattack_offline.prepare()

import textattack  # noqa: E402 - after prepare(): TextAttack runs its NLTK downloads at import otherwise
from textattack.attack_results import FailedAttackResult, SkippedAttackResult, SuccessfulAttackResult  # noqa: E402
from textattack.models.wrappers import ModelWrapper  # noqa: E402
from textattack.shared.utils import logger as _ta_logger  # noqa: E402
from textattack.transformations import WordSwap  # noqa: E402

# TextAttack warns that it does not know a scikit-learn pipeline; the wrapper below is what makes it fit.
_ta_logger.setLevel(logging.ERROR)

# Recipes of TextAttack 0.3.11 that need nothing but WordNet and stopwords (the rest download
# embeddings, sentence encoders or Hugging Face models, or are broken in the wheel).
OFFLINE_RECIPES = ("DeepWordBugGao2018", "PWWSRen2019", "Pruthi2019")
NEED_DOWNLOADS = {
    "TextFoolerJin2019": "counter-fitted word embeddings and the Universal Sentence Encoder",
    "BAEGarg2019": "a BERT masked language model", "BERTAttackLi2020": "a BERT masked language model",
    "TextBuggerLi2018": "the Universal Sentence Encoder (and its homoglyph file is missing from the 0.3.11 wheel)",
    "GeneticAlgorithmAlzantot2018": "word embeddings and a language model", "FasterGeneticAlgorithmJia2019":
    "word embeddings and a language model", "PSOZang2020": "HowNet sememes", "CLARE2020": "a RoBERTa model",
    "CheckList2020": "a flair NER model", "A2TYoo2021": "a sentence-transformers model",
    "Kuleshov2017": "word embeddings and a language model", "IGAWang2019": "word embeddings",
}


class PipelineWrapper(ModelWrapper):
    """A TextAttack model wrapper around a fitted scikit-learn pipeline (text in, probabilities out).

    TextAttack 0.3.11's SklearnModelWrapper calls `get_feature_names`, which scikit-learn removed in
    1.2; this wrapper passes the raw strings to the pipeline instead. `preprocess` (optional) is
    applied to every string first: wrap `sanitise` and the model together to attack the defended
    system as a whole.
    """

    def __init__(self, pipeline, preprocess: Callable[[str], str] | None = None, batch_size: int = 256):
        if not hasattr(pipeline, "predict_proba"):
            raise TypeError(f"PipelineWrapper needs a fitted classifier with predict_proba; got "
                            f"{type(pipeline).__name__}. Use e.g. LogisticRegression at the end of the pipeline.")
        self.model = pipeline
        self.preprocess = preprocess
        self.batch_size = batch_size

    def __call__(self, text_input_list: Sequence[str]) -> np.ndarray:
        if isinstance(text_input_list, str):
            raise TypeError("PipelineWrapper takes a LIST of strings (a batch); wrap one message as [message].")
        texts = [t if isinstance(t, str) else str(t) for t in text_input_list]
        if self.preprocess is not None:
            texts = [self.preprocess(t) for t in texts]
        if not texts:
            return np.zeros((0, len(self.model.classes_)))
        out = [self.model.predict_proba(texts[i:i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.asarray(np.concatenate(out), dtype=np.float64)

    def get_grad(self, text_input):
        raise NotImplementedError("a scikit-learn pipeline gives no gradients; use gradient-free search "
                                  "(GreedyWordSwapWIR, BeamSearch), as every recipe of this lab does.")


def recipe(name: str, model_wrapper: ModelWrapper, query_budget: int | None = None):
    """Build one of TextAttack's recipes by name (only the offline ones)."""
    if name in NEED_DOWNLOADS:
        raise ValueError(f"{name} needs {NEED_DOWNLOADS[name]}, which must be downloaded: it cannot run offline. "
                         f"Offline recipes: {', '.join(OFFLINE_RECIPES)}, or assemble an attack from components.")
    if name not in OFFLINE_RECIPES:
        raise ValueError(f"unknown or untested recipe {name!r}; offline recipes: {', '.join(OFFLINE_RECIPES)}.")
    from textattack import attack_recipes

    attack = getattr(attack_recipes, name).build(model_wrapper)
    if query_budget is not None:
        attack.goal_function.query_budget = query_budget
    return attack


class VisualSwap(WordSwap):
    """Swap one character of a word for a look-alike: a letter from another script (Cyrillic 'а'
    for Latin 'a') or a leetspeak digit ('3' for 'e'). A reader sees the same word; a model that
    matches tokens sees a word it never met. One candidate per swappable position and kind, or
    with random_one=True a single random one per word (as TextAttack's character swaps do):
    an augmenter then builds copies at a fraction of the cost."""

    def __init__(self, homoglyphs: bool = True, leet: bool = True, random_one: bool = False):
        from .text_defences import HOMOGLYPHS

        if not (homoglyphs or leet):
            raise ValueError("VisualSwap needs homoglyphs=True, leet=True or both.")
        self.random_one = random_one
        self.options: dict[str, list[str]] = {}
        if homoglyphs:
            for fake, latin in HOMOGLYPHS.items():
                if latin.isascii() and fake.isalpha() and latin not in self.options:
                    self.options[latin] = [fake]
        if leet:
            for letter, digit in (("o", "0"), ("i", "1"), ("l", "1"), ("e", "3"), ("a", "4"), ("s", "5"), ("t", "7")):
                self.options.setdefault(letter, []).append(digit)
                self.options.setdefault(letter.upper(), []).append(digit)

    def _get_replacement_words(self, word: str) -> list[str]:
        candidates = [word[:i] + new + word[i + 1:] for i, ch in enumerate(word) for new in self.options.get(ch, ())]
        if self.random_one and candidates:
            return [random.choice(candidates)]
        return candidates


@dataclass
class AttackRun:
    """The results of one attack on a fixed set of messages, and their summary."""

    name: str
    results: list = field(repr=False)
    seconds: float

    def counts(self) -> dict:
        kinds = {"successful": SuccessfulAttackResult, "failed": FailedAttackResult, "skipped": SkippedAttackResult}
        return {k: sum(isinstance(r, cls) for r in self.results) for k, cls in kinds.items()}

    def metrics(self) -> dict:
        """success_rate: broken / attacked (attacked = correctly classified before the attack);
        accuracy_under_attack: still correct after the attack / all messages; clean_accuracy:
        correct before / all; words_changed: mean fraction of words changed in the successful
        adversarial messages; queries: mean model queries per attacked message."""
        c = self.counts()
        n = len(self.results)
        attacked = c["successful"] + c["failed"]
        changed = [_words_changed(r) for r in self.results if isinstance(r, SuccessfulAttackResult)]
        queries = [r.num_queries for r in self.results if not isinstance(r, SkippedAttackResult)]
        return {"n": n, "clean_accuracy": attacked / n if n else float("nan"),
                "success_rate": c["successful"] / attacked if attacked else float("nan"),
                "accuracy_under_attack": c["failed"] / n if n else float("nan"),
                "words_changed": float(np.mean(changed)) if changed else 0.0,
                "queries": float(np.mean(queries)) if queries else 0.0, "seconds": self.seconds}

    def adversarial(self) -> list[str]:
        """The adversarial messages of the successful attacks."""
        return [r.perturbed_result.attacked_text.text for r in self.results if isinstance(r, SuccessfulAttackResult)]

    def originals(self, successful_only: bool = True) -> list[str]:
        return [r.original_result.attacked_text.text for r in self.results
                if not successful_only or isinstance(r, SuccessfulAttackResult)]


def _words_changed(result) -> float:
    original = result.original_result.attacked_text
    perturbed = result.perturbed_result.attacked_text
    n = max(len(original.words), 1)
    return len(original.all_words_diff(perturbed)) / n


def run(attack, texts: Sequence[str], labels, name: str = "attack", seed: int = 0, progress: bool = True) -> AttackRun:
    """Attack each (text, label) once, in order, with a progress bar; seeded (several
    transformations pick characters at random)."""
    from tqdm.auto import tqdm

    texts = list(texts)
    labels = [int(y) for y in np.asarray(labels).ravel()]
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} messages but {len(labels)} labels.")
    random.seed(seed)
    np.random.seed(seed)
    start = time.perf_counter()
    results = []
    for text, label in tqdm(list(zip(texts, labels)), desc=name, disable=not progress, leave=False):
        results.append(attack.attack(text, label))
    return AttackRun(name, results, time.perf_counter() - start)


def diff_html(run_: AttackRun, k: int = 5) -> str:
    """An HTML table of the first k successful adversarial messages beside their originals,
    changed words coloured (TextAttack's own diff)."""
    rows = []
    for r in [r for r in run_.results if isinstance(r, SuccessfulAttackResult)][:k]:
        before, after = r.diff_color(color_method="html")
        p0 = float(r.original_result.raw_output[1])  # the model's P(spam) before and after
        p1 = float(r.perturbed_result.raw_output[1])
        rows.append(f"<tr><td style='text-align:left'>{before}<br><small>P(spam) {p0:.2f}</small></td>"
                    f"<td style='text-align:left'>{after}<br><small>P(spam) {p1:.2f}</small></td></tr>")
    if not rows:
        return f"<p>{run_.name}: no successful attack to show.</p>"
    return (f"<p><b>{run_.name}</b>: original (left), adversarial (right)</p><table>"
            "<tr><th>original</th><th>adversarial</th></tr>" + "".join(rows) + "</table>")


def augment(texts: Sequence[str], labels, augmenter, seed: int = 0, progress: bool = True):
    """Adversarial-training data: each message of `texts` plus the augmenter's perturbed copies,
    labels repeated. Returns (texts, labels) with the originals first."""
    from tqdm.auto import tqdm

    random.seed(seed)
    np.random.seed(seed)
    labels = np.asarray(labels, dtype=np.int64)
    out_texts, out_labels = list(texts), list(labels)
    for text, label in tqdm(list(zip(texts, labels)), desc="augmenting", disable=not progress, leave=False):
        for new in augmenter.augment(text):
            out_texts.append(new)
            out_labels.append(int(label))
    return out_texts, np.asarray(out_labels, dtype=np.int64)


__all__ = ["PipelineWrapper", "VisualSwap", "recipe", "run", "AttackRun", "diff_html", "augment", "OFFLINE_RECIPES",
           "NEED_DOWNLOADS", "textattack"]
