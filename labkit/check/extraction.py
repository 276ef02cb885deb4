"""Check for the model-extraction lab (05): the surrogate trained from the API's answers."""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from .common import TODO_MESSAGE, Feedback, check_signature, fail, reference_used, watch_for

_POSITIVE_WORDS = ("gripping", "charming", "moving", "witty", "superb", "tender", "clever", "lovely", "bold",
                   "delightful", "smart", "warm", "fresh", "vivid", "graceful", "honest", "rich", "playful")
_NEGATIVE_WORDS = ("dull", "tedious", "clumsy", "bland", "messy", "hollow", "stale", "silly", "lazy", "flat",
                   "shallow", "tired", "awkward", "muddled", "sloppy", "boring", "forced", "pointless")
_NEUTRAL_WORDS = ("film", "movie", "story", "actor", "scene", "plot", "director", "script", "ending", "camera",
                  "music", "cast", "hour", "city", "family", "night", "role", "drama", "comedy", "line",
                  "picture", "screen", "summer", "war", "love", "school", "town", "dialogue")


@functools.lru_cache(maxsize=1)
def _surrogate_bench():
    """Fixed sentences from a small vocabulary, and a teacher's P(positive) for each: moderate
    probabilities, so that a surrogate fitted on soft answers differs visibly from one fitted on
    thresholded labels."""
    rng = np.random.default_rng(2024)
    weights = {w: 1.0 for w in _POSITIVE_WORDS} | {w: -1.0 for w in _NEGATIVE_WORDS} | {w: 0.0 for w in _NEUTRAL_WORDS}
    vocab = list(weights)

    def sentences(n):
        out = []
        for _ in range(n):
            words = list(rng.choice(vocab, size=int(rng.integers(5, 11))))
            out.append(" ".join(words))
        return out

    def teacher(texts):
        score = np.array([sum(weights[w] for w in t.split()) for t in texts])
        return 1 / (1 + np.exp(-0.6 * score + 0.1))

    train_texts, eval_texts = sentences(400), sentences(300)
    return train_texts, teacher(train_texts), eval_texts


def _surrogate_proba(exercise: str, model, texts) -> np.ndarray:
    if model is None:
        fail(exercise, "your function returned None: did you forget `return model`?")
    if not hasattr(model, "predict"):
        fail(exercise, f"return the fitted scikit-learn model (it needs .predict(texts)), not a {type(model).__name__}.")
    try:
        proba = model.predict_proba(list(texts)) if hasattr(model, "predict_proba") else None
        labels = np.asarray(model.predict(list(texts)))
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ == "NotFittedError":
            fail(exercise, "the model you returned is not fitted: call model.fit(...) before returning it.", e)
        fail(exercise, f"calling .predict on your model raised {type(e).__name__}: {e}. Return the fitted pipeline "
              "from extraction.surrogate_pipeline(), which takes raw texts.", e)
    if proba is None:
        return labels.astype(float)
    return np.asarray(proba)[:, -1]


def train_surrogate(fn: Callable) -> Feedback:
    """Check a learner's `fn(texts, p_positive) -> fitted model` against the reference
    `labkit.extraction.fit_surrogate` (soft labels by sample weights) on fixed sentences:
    with probabilities, with labels only (answers of 0 and 1), and on a second, different call."""
    from .. import extraction

    exercise = "train_surrogate"
    if not callable(fn):
        fail(exercise, f"pass your function itself, e.g. check.{exercise}({exercise}), not a {type(fn).__name__}.")
    texts, p, eval_texts = _surrogate_bench()
    check_signature(exercise, fn, (texts, p), "train_surrogate(texts, p_positive)")
    reference = extraction.fit_surrogate(texts, p)
    ref_labels = reference.predict(eval_texts)
    ref_p = reference.predict_proba(eval_texts)[:, 1]
    hard_ref_p = extraction.fit_surrogate(texts, (p > 0.5).astype(float)).predict_proba(eval_texts)[:, 1]

    def run(t, answers):
        given, t_before = list(t), list(t)
        watch = watch_for([(extraction.fit_surrogate, "labkit.extraction.fit_surrogate")])
        try:
            with watch:
                model = fn(given, np.array(answers, copy=True))
        except NotImplementedError as e:
            fail(exercise, TODO_MESSAGE, e)
        except ValueError as e:
            if "Unknown label type" in str(e) or "continuous" in str(e):
                fail(exercise, "LogisticRegression needs class labels, not probabilities: list every text twice, "
                      "once with label 1 and sample weight p, once with label 0 and sample weight 1 - p, and pass "
                      "the weights as logisticregression__sample_weight=... to the pipeline's fit.", e)
            fail(exercise, f"your function raised ValueError: {e}", e)
        except Exception as e:  # noqa: BLE001
            fail(exercise, f"your function raised {type(e).__name__}: {e}", e)
        if watch.hit:
            reference_used(exercise, watch.hit)
        if given != t_before:
            fail(exercise, "your function changed the list of texts it was given: build a new list (texts + texts).")
        return model

    model = run(texts, p)
    yours_p = _surrogate_proba(exercise, model, eval_texts)
    yours_labels = (yours_p > 0.5).astype(int)
    agree = float((yours_labels == ref_labels).mean())
    if agree < 0.3:
        fail(exercise, f"your surrogate disagrees with the reference on {1 - agree:.0%} of the sentences: the labels "
              "are swapped. The text copy labelled 1 (positive) gets weight p, the copy labelled 0 gets 1 - p.")
    gap = float(np.abs(yours_p - ref_p).mean())
    if gap > 0.02 and float(np.abs(yours_p - hard_ref_p).mean()) < 0.02:
        fail(exercise, "your surrogate learned from thresholded labels (p > 0.5) and threw away how sure the API "
              "was: keep p itself as the weights (p for label 1, 1 - p for label 0).")
    if agree < 0.97 or gap > 0.03:
        fail(exercise, f"your surrogate agrees with the reference on {agree:.0%} of held-out sentences (probabilities "
              f"differ by {gap:.3f} on average); expected at least 97%. Start from extraction.surrogate_pipeline(), "
              "fit it on texts + texts with labels [1] * n + [0] * n and weights p followed by 1 - p.")
    # labels only: answers of exactly 0 and 1 must work too (zero weights included)
    hard = (p > 0.5).astype(float)
    hard_model = run(texts, hard)
    if hard_model is model:
        fail(exercise, "a second call returned the very same model object: build and fit a new pipeline inside "
              "the function on every call, from the texts and answers it is given.")
    hard_p = _surrogate_proba(exercise, hard_model, eval_texts)
    if float(np.abs(hard_p - hard_ref_p).mean()) > 0.03:
        fail(exercise, "with label-only answers (p is 0 or 1) your surrogate differs from the reference: the same "
              "code should work, the weights are then just 1 and 0.")
    # a second call on other data must give a different model: nothing cached between calls
    half = len(texts) // 2
    second = run(texts[half:], p[half:])
    second_p = _surrogate_proba(exercise, second, eval_texts)
    ref_second = extraction.fit_surrogate(texts[half:], p[half:]).predict_proba(eval_texts)[:, 1]
    if float(np.abs(second_p - ref_second).mean()) > 0.03:
        fail(exercise, "called a second time with other queries, your function returned a model that does not "
              "match them: build and fit a new pipeline inside the function on every call.")
    message = (f"agrees with the reference surrogate on {agree:.1%} of held-out sentences (mean probability gap "
               f"{gap:.4f}), and works with label-only answers too.")
    return Feedback(exercise, True, message, {"agreement": agree, "probability_gap": gap}).show()
