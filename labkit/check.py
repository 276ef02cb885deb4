"""Learner feedback: run a learner's function on fixed inputs, compare it with a reference, and
answer in one sentence that points at the fix.

    labkit.check.fgsm(fgsm)                 # prints "✓ fgsm: ..." or raises ExerciseFailed
    labkit.check.fgsm_random_start(fn)      # the adversarial-training perturbation

A check prints a `Feedback` and returns it when the function passes; it raises `ExerciseFailed`
(an AssertionError, so nbval and pytest mark the cell as failed) with the diagnosis otherwise.
Checks run on a small seeded model and a synthetic batch that are built the same way every
time, inside `torch.random.fork_rng()`, so running a check never changes the notebook's random
numbers.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ExerciseFailed", "Feedback", "fgsm", "fgsm_random_start", "adversarial_batch"]

# Pixel values equal within this are "the same"; FGSM's result is exact up to float rounding.
ATOL = 1e-5


class ExerciseFailed(AssertionError):
    """A learner's function does not do what the exercise asks; the message says what to change."""


@dataclass
class Feedback:
    """The outcome of a check: which exercise, whether it passed, and a sentence about it."""

    exercise: str
    passed: bool
    message: str
    details: dict = field(default_factory=dict)
    _printed: bool = field(default=False, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{'✓' if self.passed else '✗'} {self.exercise}: {self.message}"

    def show(self) -> "Feedback":
        print(str(self))
        self._printed = True
        return self

    def _ipython_display_(self):  # the check already printed it; show it once only
        if not self._printed:
            print(str(self))


def _fail(exercise: str, message: str, cause: BaseException | None = None):
    err = ExerciseFailed(f"✗ {exercise}: {message}")
    if cause is not None:
        raise err from cause
    raise err


# ---------------------------------------------------------------------------------------------
# The fixed test bench: a small seeded CNN, fitted briefly to a synthetic digit-like batch.
# ---------------------------------------------------------------------------------------------

def _digit_like_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n digit-like images from the current torch RNG: mostly exact 0 background, bright 1.0
    strokes, some grey edges (so a step that forgets to clip really leaves [0, 1]); random labels."""
    strokes = (torch.rand(n, 1, 28, 28) < 0.18).float()
    grey = torch.rand(n, 1, 28, 28) * (torch.rand(n, 1, 28, 28) < 0.12).float()
    return torch.maximum(strokes, grey), torch.randint(0, 10, (n,))


@functools.lru_cache(maxsize=1)
def _bench_state():
    from .models import SmallCNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        x, y = _digit_like_batch(64)
        model = SmallCNN()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(25):  # fit 48 of the 64 images a little: a confident model makes directions
            opt.zero_grad()  # obvious, and the 16 it never saw give it some wrong predictions
            F.cross_entropy(model(x[:48]), y[:48]).backward()
            opt.step()
        model.eval()
        for p in model.parameters():
            p.grad = None
        state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, x, y


def _bench():
    """A fresh copy of the bench model (eval mode) and the batch, so learners cannot spoil it."""
    from .models import SmallCNN

    state, x, y = _bench_state()
    model = SmallCNN()
    model.load_state_dict(state)
    model.eval()
    return model, x.clone(), y.clone()


def _loss(model, x, y) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def _input_grad(model, x, y) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    return g


def _call(exercise: str, fn: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *args):
    """Call the learner's function; translate the usual exceptions into advice."""
    if not callable(fn):
        _fail(exercise, f"pass your function itself, e.g. check.{exercise}({exercise}), not a {type(fn).__name__}.")
    try:
        return fn(model, x, y, *args)
    except NotImplementedError as e:
        _fail(exercise, "this exercise is still TODO: replace the `raise NotImplementedError` line with your code.", e)
    except RuntimeError as e:
        text = str(e)
        if "does not require grad" in text or "does not have a grad_fn" in text:
            _fail(exercise, "autograd has nothing to differentiate: make a copy of the input that requires "
                  "gradients (x_adv = x.clone().detach().requires_grad_(True)) before the forward pass, and "
                  "do not compute the loss under torch.no_grad().", e)
        _fail(exercise, f"your function raised RuntimeError: {text}", e)
    except Exception as e:  # noqa: BLE001 - any learner error becomes feedback
        _fail(exercise, f"your function raised {type(e).__name__}: {e}", e)


def _validate_output(exercise: str, out, x: torch.Tensor, x_before: torch.Tensor, model: nn.Module,
                     params_before: list[torch.Tensor], eps: float, project_hint: str) -> torch.Tensor:
    """Checks every perturbation exercise shares: type, shape, dtype, graph, side effects, range, budget."""
    if out is None:
        _fail(exercise, "your function returned None: did you forget `return x_adv`?")
    if isinstance(out, np.ndarray):
        _fail(exercise, "return a torch tensor (the same type as x), not a numpy array.")
    if isinstance(out, (tuple, list)):
        _fail(exercise, f"return only the adversarial images, not a {type(out).__name__} of {len(out)} items.")
    if not isinstance(out, torch.Tensor):
        _fail(exercise, f"return a torch tensor, not a {type(out).__name__}.")
    if tuple(out.shape) != tuple(x.shape):
        _fail(exercise, f"x_adv has shape {tuple(out.shape)} but x has shape {tuple(x.shape)}: return one "
              "adversarial image per input image, shaped like x (check for a stray squeeze, flatten or argmax).")
    if out.dtype != x.dtype:
        _fail(exercise, f"x_adv has dtype {out.dtype} but x has dtype {x.dtype}: keep the images as {x.dtype}.")
    if out.requires_grad or out.grad_fn is not None:
        _fail(exercise, "x_adv is still attached to the autograd graph (it requires grad): return x_adv.detach(), "
              "or do the step inside `with torch.no_grad():`.")
    if model.training:
        _fail(exercise, "the model was in eval mode and your function left it in train mode: an attack must not "
              "change the model, so remove the model.train() call.")
    for before, p in zip(params_before, model.parameters()):
        if not torch.equal(before, p.detach()):
            _fail(exercise, "your function changed the model's weights: an attack computes the gradient with "
                  "respect to the input only; do not call optimizer.step() or edit the parameters.")
    if not torch.equal(x, x_before):
        _fail(exercise, "your function modified the input x in place: work on a copy (x.clone()) so that the "
              "clean images stay clean.")
    if torch.isnan(out).any():
        _fail(exercise, "x_adv contains NaN values: check the gradient computation.")
    low, high = out.min().item(), out.max().item()
    if low < -ATOL or high > 1 + ATOL:
        _fail(exercise, f"your step moves pixels outside [0, 1] (they range from {low:.3f} to {high:.3f}): "
              "images only have valid pixels in [0, 1], so clip after the step, e.g. x_adv.clamp(0, 1).")
    biggest = (out - x).abs().max().item()
    if biggest > eps + ATOL:
        _fail(exercise, f"your perturbation is larger than eps: a pixel moved by {biggest:.3f} with eps = {eps:g}. "
              + project_hint)
    if biggest <= ATOL:
        _fail(exercise, "x_adv equals x: your function did not perturb the images at all.")
    return out


def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of pixels where two image batches agree."""
    return ((a - b).abs() <= ATOL).float().mean().item()


# ---------------------------------------------------------------------------------------------
# Exercise: FGSM
# ---------------------------------------------------------------------------------------------

def _diagnose_fgsm(model, x, y, eps, out) -> str | None:
    """None when `out` is FGSM; otherwise a sentence saying what is different."""
    from .attacks import fgsm_reference

    reference = fgsm_reference(model, x, eps, y=y)
    agree = _agree(out, reference)
    if agree >= 0.999:
        return None
    grad = _input_grad(model, x, y)
    descent = (x - eps * grad.sign()).clamp(0, 1)
    if _agree(out, descent) >= 0.99:
        return ("wrong direction: you subtracted the gradient step, which lowers the loss and makes the model "
                "more sure of the right answer. FGSM climbs the loss: x + eps * grad.sign().")
    with torch.no_grad():
        predicted = model(x).argmax(1)
    if (predicted != y).any() and _agree(out, fgsm_reference(model, x, eps, y=predicted)) >= 0.999:
        return "you attacked the model's predicted labels; this exercise gives you the true labels y: use them in the loss."
    delta = out - x
    inside = (out > ATOL) & (out < 1 - ATOL)  # pixels the [0, 1] clip did not touch
    moved = inside & (delta.abs() > ATOL)
    if moved.any():
        size = delta[moved].abs()
        median = size.median().item()
        # One step size for (almost) every pixel, just not eps. Relative tolerance: a raw-gradient
        # step is tiny everywhere but varies from pixel to pixel, and must not land here.
        uniform = ((size - median).abs() <= 0.01 * median + 1e-6).float().mean().item() > 0.9
        if uniform and abs(median - eps) > 1e-4:
            return (f"every pixel moved by {median:.3f} but eps is {eps:g}: FGSM moves each pixel by "
                    "exactly eps (did you hard-code an epsilon instead of using the eps argument?).")
        at_eps = ((delta[moved].abs() - eps).abs() <= 1e-4).float().mean().item()
        nonzero = moved & (grad != 0)
        same_sign = (delta[nonzero].sign() == grad[nonzero].sign()).float().mean().item() if nonzero.any() else 0.0
        if at_eps < 0.5 and same_sign > 0.9:
            return ("you used the gradient itself instead of its sign: FGSM moves every pixel by exactly eps in "
                    "the direction of the gradient's sign, x + eps * grad.sign().")
        if at_eps < 0.5 and same_sign < 0.1:
            return ("you stepped against the gradient and used its values instead of its sign: "
                    "FGSM is x + eps * grad.sign().")
    biggest = delta.abs().max().item()
    if biggest < 0.9 * eps:
        return (f"the largest pixel change is {biggest:.3f} but eps is {eps:g}: FGSM moves each pixel by eps "
                "(did you hard-code an epsilon instead of using the eps argument?).")
    clean_loss, adv_loss = _loss(model, x, y), _loss(model, out, y)
    if adv_loss <= clean_loss:
        return (f"the loss did not go up (clean {clean_loss:.3f}, yours {adv_loss:.3f}): FGSM must increase the "
                "loss on the true labels, x + eps * grad.sign() of the cross-entropy loss.")
    return (f"your x_adv differs from the reference FGSM (cleverhans) on {100 * (1 - agree):.1f}% of the pixels. "
            "Compute the cross-entropy loss of model(x_adv) against y, take the gradient with respect to the "
            "input, step eps * grad.sign(), then clip to [0, 1].")


def fgsm(fn: Callable, eps_values: tuple[float, ...] = (0.2, 0.1)) -> Feedback:
    """Check a learner's `fn(model, x, y, eps) -> x_adv` against cleverhans' FGSM (L-infinity,
    untargeted, true labels, clipped to [0, 1]) on a fixed model and batch, for each eps."""
    exercise = "fgsm"
    project_hint = "FGSM moves each pixel by exactly eps: x + eps * grad.sign() (did you hard-code an epsilon?)."
    with torch.random.fork_rng(devices=[]):
        for i, eps in enumerate(eps_values):
            model, x, y = _bench()
            if i:
                x, y = x.flip(0), y.flip(0)  # a different batch order: catches a cached answer
            x_before, params = x.clone(), _snapshot(model)
            out = _call(exercise, fn, model, x, y, eps)
            out = _validate_output(exercise, out, x, x_before, model, params, eps, project_hint)
            problem = _diagnose_fgsm(model, x, y, eps, out)
            if problem:
                _fail(exercise, f"(eps = {eps:g}) {problem}")
    message = (f"matches cleverhans' FGSM on every pixel at eps = {', '.join(f'{e:g}' for e in eps_values)} "
               "(stays in [0, 1], within eps, increases the loss).")
    return Feedback(exercise, True, message, {"eps_values": tuple(eps_values)}).show()


# ---------------------------------------------------------------------------------------------
# Exercise: the adversarial-training perturbation, FGSM with a random start (Wong et al. 2020)
# ---------------------------------------------------------------------------------------------

def fgsm_random_start(fn: Callable, eps: float = 0.3, alpha: float | None = None) -> Feedback:
    """Check a learner's `fn(model, x, y, eps, alpha) -> x_adv`, FGSM from a random start.

    Passes when x_adv stays in [0, 1] and within eps of x, differs from call to call and from
    plain FGSM (the random start is there), moves with the gradient's sign, and raises the loss
    about as much as the reference `labkit.attacks.fgsm_random_start`.
    """
    from .attacks import fgsm_random_start as reference

    exercise = "fgsm_random_start"
    alpha = 1.25 * eps if alpha is None else alpha
    project_hint = ("The step alpha is larger than eps, so after the step project delta back onto the eps ball: "
                    "delta.clamp(-eps, eps), then clip x + delta to [0, 1].")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, x, y = _bench()
        x_before, params = x.clone(), _snapshot(model)
        first = _validate_output(exercise, _call(exercise, fn, model, x, y, eps, alpha), x, x_before, model, params,
                                 eps, project_hint)
        second = _validate_output(exercise, _call(exercise, fn, model, x, y, eps, alpha), x, x_before, model, params,
                                  eps, project_hint)
        grad = _input_grad(model, x, y)
        plain = (x + eps * grad.sign()).clamp(0, 1)
        if _agree(first, plain) >= 0.95:
            _fail(exercise, "x_adv is plain FGSM: there is no random start. Start from x + delta with delta drawn "
                  "uniformly from [-eps, eps] (torch.empty_like(x).uniform_(-eps, eps)), step alpha * sign of the "
                  "gradient at that point, then project back to the eps ball.")
        if torch.equal(first, second):
            _fail(exercise, "two calls gave exactly the same x_adv: draw the random start afresh on every call "
                  "(do not seed inside the function or reuse a fixed delta).")
        delta = first - x
        inside = (first > ATOL) & (first < 1 - ATOL) & (grad != 0)
        with_grad = (delta[inside] * grad[inside].sign()).mean().item() / eps if inside.any() else 0.0
        clean_loss = _loss(model, x, y)
        yours = (_loss(model, first, y) + _loss(model, second, y)) / 2
        refs = [_loss(model, reference(model, x, y, eps, alpha), y) for _ in range(2)]
        ref = sum(refs) / len(refs)
        noise = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        noise_loss = _loss(model, noise, y)
        if with_grad < -0.2:
            _fail(exercise, "wrong direction: you subtracted the gradient step, so the loss goes down. Training "
                  "needs the hardest nearby images: delta + alpha * grad.sign().")
        if abs(with_grad) < 0.2 or yours <= noise_loss:
            _fail(exercise, "x_adv looks like the random start alone: after drawing delta, compute the loss at "
                  "x + delta, take its gradient with respect to delta, and step alpha * grad.sign().")
        # Pixels pushed to the edge of the ball follow the sign of the gradient at x + delta. If every
        # one of them follows the gradient at x instead, the step ignored the random start (on this
        # bench the reference agrees with the gradient at x on about 82% of them).
        edge = ((delta.abs() - eps).abs() <= 1e-4) & inside
        if edge.sum() > 100 and (delta[edge].sign() == grad[edge].sign()).float().mean().item() >= 0.995:
            _fail(exercise, "you took the gradient at x, not at the random start: compute the loss at x + delta "
                  "and take its gradient with respect to delta, so the step starts from the random point.")
        if yours - clean_loss < 0.5 * (ref - clean_loss):
            _fail(exercise, f"your x_adv raises the loss from {clean_loss:.2f} to only {yours:.2f}; the reference "
                  f"reaches {ref:.2f}. Step alpha * grad.sign() from the random start (gradient taken at x + delta), "
                  "then clamp delta to [-eps, eps] and x + delta to [0, 1].")
    message = (f"random start present, within eps = {eps:g} and [0, 1], raises the loss from {clean_loss:.2f} to "
               f"{yours:.2f} (reference {ref:.2f}, random noise alone {noise_loss:.2f}).")
    return Feedback(exercise, True, message, {"clean_loss": clean_loss, "loss": yours, "reference_loss": ref,
                                              "noise_loss": noise_loss, "alignment": with_grad}).show()


adversarial_batch = fgsm_random_start  # the name the adversarial-training exercise may use


# ---------------------------------------------------------------------------------------------
# Exercise: train the extraction surrogate from the API's answers (lab 05)
# ---------------------------------------------------------------------------------------------

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
        _fail(exercise, "your function returned None: did you forget `return model`?")
    if not hasattr(model, "predict"):
        _fail(exercise, f"return the fitted scikit-learn model (it needs .predict(texts)), not a {type(model).__name__}.")
    try:
        proba = model.predict_proba(list(texts)) if hasattr(model, "predict_proba") else None
        labels = np.asarray(model.predict(list(texts)))
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ == "NotFittedError":
            _fail(exercise, "the model you returned is not fitted: call model.fit(...) before returning it.", e)
        _fail(exercise, f"calling .predict on your model raised {type(e).__name__}: {e}. Return the fitted pipeline "
              "from extraction.surrogate_pipeline(), which takes raw texts.", e)
    if proba is None:
        return labels.astype(float)
    return np.asarray(proba)[:, -1]


def train_surrogate(fn: Callable) -> Feedback:
    """Check a learner's `fn(texts, p_positive) -> fitted model` against the reference
    `labkit.extraction.fit_surrogate` (soft labels by sample weights) on fixed sentences:
    with probabilities, with labels only (answers of 0 and 1), and on a second, different call."""
    from . import extraction

    exercise = "train_surrogate"
    if not callable(fn):
        _fail(exercise, f"pass your function itself, e.g. check.{exercise}({exercise}), not a {type(fn).__name__}.")
    texts, p, eval_texts = _surrogate_bench()
    reference = extraction.fit_surrogate(texts, p)
    ref_labels = reference.predict(eval_texts)
    ref_p = reference.predict_proba(eval_texts)[:, 1]
    hard_ref_p = extraction.fit_surrogate(texts, (p > 0.5).astype(float)).predict_proba(eval_texts)[:, 1]

    def run(t, answers):
        given, t_before = list(t), list(t)
        try:
            model = fn(given, np.array(answers, copy=True))
        except NotImplementedError as e:
            _fail(exercise, "this exercise is still TODO: replace the `raise NotImplementedError` line with your code.", e)
        except ValueError as e:
            if "Unknown label type" in str(e) or "continuous" in str(e):
                _fail(exercise, "LogisticRegression needs class labels, not probabilities: list every text twice, "
                      "once with label 1 and sample weight p, once with label 0 and sample weight 1 - p, and pass "
                      "the weights as logisticregression__sample_weight=... to the pipeline's fit.", e)
            _fail(exercise, f"your function raised ValueError: {e}", e)
        except Exception as e:  # noqa: BLE001
            _fail(exercise, f"your function raised {type(e).__name__}: {e}", e)
        if given != t_before:
            _fail(exercise, "your function changed the list of texts it was given: build a new list (texts + texts).")
        return model

    model = run(texts, p)
    yours_p = _surrogate_proba(exercise, model, eval_texts)
    yours_labels = (yours_p > 0.5).astype(int)
    agree = float((yours_labels == ref_labels).mean())
    if agree < 0.3:
        _fail(exercise, f"your surrogate disagrees with the reference on {1 - agree:.0%} of the sentences: the labels "
              "are swapped. The text copy labelled 1 (positive) gets weight p, the copy labelled 0 gets 1 - p.")
    gap = float(np.abs(yours_p - ref_p).mean())
    if gap > 0.02 and float(np.abs(yours_p - hard_ref_p).mean()) < 0.02:
        _fail(exercise, "your surrogate learned from thresholded labels (p > 0.5) and threw away how sure the API "
              "was: keep p itself as the weights (p for label 1, 1 - p for label 0).")
    if agree < 0.97 or gap > 0.03:
        _fail(exercise, f"your surrogate agrees with the reference on {agree:.0%} of held-out sentences (probabilities "
              f"differ by {gap:.3f} on average); expected at least 97%. Start from extraction.surrogate_pipeline(), "
              "fit it on texts + texts with labels [1] * n + [0] * n and weights p followed by 1 - p.")
    # labels only: answers of exactly 0 and 1 must work too (zero weights included)
    hard = (p > 0.5).astype(float)
    hard_model = run(texts, hard)
    if hard_model is model:
        _fail(exercise, "a second call returned the very same model object: build and fit a new pipeline inside "
              "the function on every call, from the texts and answers it is given.")
    hard_p = _surrogate_proba(exercise, hard_model, eval_texts)
    if float(np.abs(hard_p - hard_ref_p).mean()) > 0.03:
        _fail(exercise, "with label-only answers (p is 0 or 1) your surrogate differs from the reference: the same "
              "code should work, the weights are then just 1 and 0.")
    # a second call on other data must give a different model: nothing cached between calls
    half = len(texts) // 2
    second = run(texts[half:], p[half:])
    second_p = _surrogate_proba(exercise, second, eval_texts)
    ref_second = extraction.fit_surrogate(texts[half:], p[half:]).predict_proba(eval_texts)[:, 1]
    if float(np.abs(second_p - ref_second).mean()) > 0.03:
        _fail(exercise, "called a second time with other queries, your function returned a model that does not "
              "match them: build and fit a new pipeline inside the function on every call.")
    message = (f"agrees with the reference surrogate on {agree:.1%} of held-out sentences (mean probability gap "
               f"{gap:.4f}), and works with label-only answers too.")
    return Feedback(exercise, True, message, {"agreement": agree, "probability_gap": gap}).show()


__all__ += ["train_surrogate"]


# ---------------------------------------------------------------------------------------------
# Lab 07: API keys checked in constant time, and a sliding-window rate limit
# ---------------------------------------------------------------------------------------------

def api_key_lookup(fn: Callable) -> Feedback:
    """fn(presented, digests) -> client name or None, where digests maps sha256 hex digests of
    issued keys to client names. It must hash the presented key and compare digests with
    hmac.compare_digest, and refuse missing keys."""
    import hashlib
    import hmac
    import inspect

    exercise = "api_key_lookup"
    keys = {"bank_a": "lk_" + "a1" * 16, "bank_b": "lk_" + "b2" * 16, "bank_c": "lk_" + "c3" * 16}
    digests = {hashlib.sha256(k.encode()).hexdigest(): name for name, k in keys.items()}
    real = hmac.compare_digest
    calls = []

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    hmac.compare_digest = counting
    try:
        for name, key in keys.items():
            try:
                got = fn(key, dict(digests))
            except Exception as err:  # noqa: BLE001 - reported to the learner
                _fail(exercise, f"raised {type(err).__name__}: {err} for a valid key.", err)
            if got != name:
                if got is None and fn(hashlib.sha256(key.encode()).hexdigest(), dict(digests)) == name:
                    _fail(exercise, "a valid key was refused, but its digest was accepted: hash the presented key "
                          "(hashlib.sha256(key.encode()).hexdigest()) before comparing it with the stored digests.")
                _fail(exercise, f"the key of {name} returned {got!r}; expected {name!r}. Hash the presented key and "
                      "look for a stored digest equal to it.")
        for digest, name in digests.items():
            if fn(digest, dict(digests)) is not None:
                _fail(exercise, "presenting a stored DIGEST was accepted as if it were a key: compare the digest of "
                      "the presented key, never the presented string itself, with the stored digests.")
        forged = keys["bank_a"][:-1] + "X"
        if fn(forged, dict(digests)) is not None:
            _fail(exercise, "a forged key (one character changed) was accepted; return None when no digest matches.")
        for missing in (None, ""):
            try:
                got = fn(missing, dict(digests))
            except Exception as err:  # noqa: BLE001
                _fail(exercise, f"a missing key ({missing!r}) raised {type(err).__name__}; return None instead so the "
                      "API can answer 401.", err)
            if got is not None:
                _fail(exercise, f"a missing key ({missing!r}) returned {got!r}; return None.")
    finally:
        hmac.compare_digest = real
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = ""
    if not calls and "compare_digest" not in source:
        _fail(exercise, "the digests are compared with == (or a dict lookup), whose time depends on how many leading "
              "characters match; compare them with hmac.compare_digest.")
    return Feedback(exercise, True, "finds the right client for every key, refuses forged, missing and digest-as-key "
                    "inputs, and compares in constant time.").show()


def sliding_window(fn: Callable) -> Feedback:
    """fn(log, now, limit, window_s) -> (allowed, retry_after): a sliding-window rate-limit decision
    for one client whose accepted query times are in the deque `log`."""
    from collections import deque

    exercise = "sliding_window"

    def run(log, now, limit=3, window=10.0):
        try:
            out = fn(log, now, limit, window)
        except Exception as err:  # noqa: BLE001
            _fail(exercise, f"raised {type(err).__name__}: {err} (log {list(log)}, now {now}).", err)
        if not (isinstance(out, tuple) and len(out) == 2):
            _fail(exercise, f"returned {out!r}; return a pair (allowed, retry_after).")
        return bool(out[0]), float(out[1])

    log = deque()
    results = [run(log, t) for t in (0.0, 1.0, 2.0)]
    if not all(ok for ok, _ in results):
        _fail(exercise, "refused one of the first 3 queries with limit 3: accept while fewer than `limit` "
              "queries are in the window.")
    if list(log) != [0.0, 1.0, 2.0]:
        _fail(exercise, f"after three accepted queries the log holds {list(log)}; append `now` for each accepted "
              "query (and nothing else).")
    ok, retry = run(log, 3.0)
    if ok:
        _fail(exercise, "a 4th query inside the window was accepted with limit 3: an off-by-one; accept only while "
              "len(log) < limit.")
    if len(log) != 3:
        _fail(exercise, "a refused query was written to the log: only accepted queries count, otherwise a client "
              "that keeps retrying is locked out for ever.")
    if abs(retry - 7.0) > 1e-6:
        hint = (" You counted from the newest query; the window frees up when the OLDEST one leaves it."
                if abs(retry - 9.0) < 1e-6 else "")
        _fail(exercise, f"retry_after was {retry:g} s at t = 3 (queries at 0, 1, 2; window 10 s); expected 7 s, when "
              f"the query at t = 0 leaves the window.{hint}")
    ok, _ = run(log, 10.5)
    if not ok:
        _fail(exercise, "at t = 10.5 the query from t = 0 is older than the 10 s window and must no longer count: "
              "drop times <= now - window from the left of the log before counting.")
    if list(log)[0] != 1.0:
        _fail(exercise, f"the log at t = 10.5 is {list(log)}; expired times should have been removed.")
    ok, _ = run(deque([0.0, 1.0, 2.0]), 100.0)
    if not ok:
        _fail(exercise, "a client silent for 100 s was refused: remove every expired time, not just one.")
    return Feedback(exercise, True, "counts only accepted queries inside the window, refuses the one over the limit, "
                    "and says when the oldest query frees a slot.").show()


__all__ += ["api_key_lookup", "sliding_window"]


# ---------------------------------------------------------------------------------------------
# Exercise: one step of DP-SGD by hand (lab 03): per-example gradients, clipping, noise, average
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _dp_bench_state():
    """A seeded TanhCNN and a batch of 48 digit-like images; max_grad_norm sits between the
    smallest and largest per-example gradient norms, so clipping changes some examples and not others."""
    from .models import TanhCNN
    from .privacy import opacus_per_sample_gradients

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        x, y = _digit_like_batch(48)
        model = TanhCNN()
        model.eval()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        per_sample = opacus_per_sample_gradients(model, x, y)
    norms = torch.cat([g.flatten(1) for g in per_sample.values()], 1).norm(dim=1)
    clip = float(f"{norms.quantile(0.4).item():.2g}")
    for special in (1.0, len(x) ** 0.5):  # keep C away from 1 and sqrt(batch), so that each noise mistake differs
        if 0.85 * special < clip < 1.18 * special:
            clip = float(f"{norms.quantile(0.2 if clip > special else 0.6).item():.2g}")
    return state, x, y, clip


def _dp_bench():
    from .models import TanhCNN

    state, x, y, clip = _dp_bench_state()
    model = TanhCNN()
    model.load_state_dict(state)
    model.eval()
    return model, x.clone(), y.clone(), clip


def _dp_as_named(exercise: str, out, model: nn.Module) -> dict:
    """The learner's gradient as {name: tensor}, checked against the model's parameters."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if out is None:
        _fail(exercise, "your function returned None: return the noisy average gradient, a dict {name: tensor} "
              "with one entry per model parameter.")
    if isinstance(out, (list, tuple)):
        if len(out) != len(names):
            _fail(exercise, f"you returned {len(out)} tensors but the model has {len(names)} parameters: return one "
                  "gradient per parameter (a dict {name: tensor} like dict(model.named_parameters())).")
        out = dict(zip(names, out))
    if not isinstance(out, dict):
        _fail(exercise, f"return a dict {{name: gradient tensor}} (one per parameter), not a {type(out).__name__}.")
    missing = [n for n in names if n not in out]
    if missing:
        _fail(exercise, f"no gradient for {', '.join(missing[:3])}: return one entry per name in "
              "dict(model.named_parameters()).")
    result = {}
    for n in names:
        g = out[n]
        if not isinstance(g, torch.Tensor):
            _fail(exercise, f"the gradient for {n} is a {type(g).__name__}, not a torch tensor.")
        if tuple(g.shape) != shapes[n]:
            if g.dim() == len(shapes[n]) + 1 and tuple(g.shape[1:]) == shapes[n]:
                _fail(exercise, f"the gradient for {n} still has a batch dimension {tuple(g.shape)}: sum the clipped "
                      "per-example gradients over the batch (dim 0), add the noise, then divide by the batch size.")
            _fail(exercise, f"the gradient for {n} has shape {tuple(g.shape)} but the parameter has shape {shapes[n]}.")
        if torch.isnan(g).any() or torch.isinf(g).any():
            _fail(exercise, f"the gradient for {n} contains NaN or inf: add a small constant to the norm before "
                  "dividing (max_grad_norm / (norm + 1e-6)).")
        result[n] = g.detach().double()
    return result


def _dp_flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.reshape(-1).double() for g in grads.values()])


def _dp_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-3) -> bool:
    return (a - b).norm().item() <= rtol * max(b.norm().item(), 1e-12)


def _diagnose_dp_clipping(per_sample: dict, clip: float, out: torch.Tensor) -> str:
    """Which common mistake in clip-and-average does `out` (flat, no noise) match?"""
    names = list(per_sample)
    b = len(next(iter(per_sample.values())))
    flat = torch.cat([per_sample[n].flatten(1).double() for n in names], 1)  # (B, P)
    norms = flat.norm(dim=1, keepdim=True)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    right = (factor * flat).sum(0) / b
    mean = flat.mean(0)
    candidates = [
        (mean, "you did not clip each example's gradient: scale every example's gradient by min(1, C / its norm) "
               "before the sum (clipping the averaged gradient instead does not bound what ONE example contributes), "
               "otherwise one unusual patient can move the model as much as it likes."),
        (mean * min(1.0, clip / (mean.norm().item() + 1e-6)),
         "you clipped the averaged (batch) gradient, not each example's gradient: DP-SGD bounds what ONE example "
         "can contribute, so compute per-example gradients (vmap), clip each to norm C, then sum."),
        ((clip / (norms + 1e-6) * flat).sum(0) / b,
         "every example's gradient was rescaled to norm C, also the small ones: clipping only shrinks, "
         "factor = min(1, C / norm) (e.g. (C / (norm + 1e-6)).clamp(max=1.0))."),
        (right * b, "you summed the clipped gradients but did not divide by the batch size: the step uses the "
                    "average, (sum of clipped gradients + noise) / batch size."),
        (right / b, "you divided by the batch size twice (once in the loss, once after the sum?): compute each "
                    "example's loss on its own, sum the clipped gradients, and divide once."),
    ]
    per_layer = []
    for n in names:
        g = per_sample[n].flatten(1).double()
        f = (clip / (g.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
        per_layer.append((f * g).sum(0) / b)
    candidates.append((torch.cat(per_layer),
                       "you clipped each parameter tensor separately: flat clipping takes ONE norm over all the "
                       "parameters of an example (concatenate every per-example gradient, then take the norm)."))
    for candidate, message in candidates:
        if _dp_close(out, candidate, 1e-3):
            return message
    rel = (out - right).norm().item() / max(right.norm().item(), 1e-12)
    return (f"with noise_multiplier = 0 your gradient differs from Opacus' clipped average by {rel:.1%} (relative "
            "norm). Compute each example's gradient (vmap over grad of a one-example loss), the norm of each over all "
            "parameters, scale by min(1, C / norm), sum over the batch, and divide by the batch size.")


def dp_sgd_step(fn: Callable, noise_multiplier: float = 1.3) -> Feedback:
    """Check a learner's `fn(model, x, y, max_grad_norm, noise_multiplier, generator=None) -> {name: grad}`,
    the gradient one DP-SGD step uses, against Opacus (GradSampleModule per-example gradients and
    DPOptimizer's flat clipping, noise and averaging) on a fixed TanhCNN and batch.

    1. With noise_multiplier = 0 the result must equal Opacus' clipped average.
    2. With noise, (result - clipped average) must look like Gaussian noise of standard deviation
       noise_multiplier * max_grad_norm / batch size, fresh on every call."""
    from .privacy import opacus_dp_gradient, opacus_per_sample_gradients

    exercise = "dp_sgd_step"
    if not callable(fn):
        _fail(exercise, f"pass your function itself, e.g. check.dp_sgd_step(dp_sgd_gradient), not a {type(fn).__name__}.")

    def call(model, x, y, clip, sigma, generator):
        try:
            return fn(model, x, y, clip, sigma, generator)
        except NotImplementedError as e:
            _fail(exercise, "this exercise is still TODO: replace the `raise NotImplementedError` line with your code.", e)
        except TypeError as e:
            if "positional argument" in str(e) or "unexpected keyword" in str(e):
                _fail(exercise, "keep the signature dp_sgd_gradient(model, x, y, max_grad_norm, noise_multiplier, "
                      f"generator=None) ({e}).", e)
            _fail(exercise, f"your function raised TypeError: {e}", e)
        except Exception as e:  # noqa: BLE001 - any learner error becomes feedback
            _fail(exercise, f"your function raised {type(e).__name__}: {e}", e)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, x, y, clip = _dp_bench()
        b = len(x)
        x_before, params = x.clone(), _snapshot(model)
        ours = _dp_as_named(exercise, call(model, x, y, clip, 0.0, torch.Generator().manual_seed(1)), model)
        for before, p in zip(params, model.parameters()):
            if not torch.equal(before, p.detach()):
                _fail(exercise, "your function changed the model's weights: it should only compute the gradient "
                      "(the optimizer applies it later).")
        if not torch.equal(x, x_before):
            _fail(exercise, "your function modified the input batch in place: work on copies.")
        reference = _dp_flat(opacus_dp_gradient(model, x, y, clip, 0.0))
        noiseless = _dp_flat(ours)
        if not _dp_close(noiseless, reference, 1e-4):
            per_sample = opacus_per_sample_gradients(model, x, y)
            _fail(exercise, f"(max_grad_norm = {clip:g}, no noise) " + _diagnose_dp_clipping(per_sample, clip, noiseless))

        g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)
        first = _dp_flat(_dp_as_named(exercise, call(model, x, y, clip, noise_multiplier, g1), model))
        second = _dp_flat(_dp_as_named(exercise, call(model, x, y, clip, noise_multiplier, g2), model))
        noise = first - reference
        expected = noise_multiplier * clip / b
        std, mean = noise.std().item(), noise.mean().item()
        ratio = std / expected
        if std <= 1e-4 * expected:
            _fail(exercise, f"no noise was added (noise_multiplier = {noise_multiplier:g}): add Gaussian noise of "
                  "standard deviation noise_multiplier * max_grad_norm to the SUM of clipped gradients, then divide "
                  "by the batch size. Without noise, clipping alone gives no privacy guarantee.")
        if torch.equal(first, second):
            _fail(exercise, "two calls with different generators gave the same noise: draw fresh noise on every call "
                  "(torch.normal(0.0, std, size=..., generator=generator)), never a fixed or cached tensor.")
        if abs(mean) > 0.2 * std + 5 * std / noise.numel() ** 0.5:
            _fail(exercise, f"the noise has mean {mean:.3g}, not 0: use Gaussian noise centred on zero "
                  "(torch.normal(0.0, std, ...) or torch.randn(...) * std), not torch.rand.")
        if abs(ratio - 1) > 0.05:
            if abs(ratio - 1 / clip) < 0.05 / clip:
                hint = ("your noise has standard deviation noise_multiplier / batch size: scale it by max_grad_norm "
                        "too. The sensitivity of the clipped sum is C, so the noise must be sigma * C.")
            elif abs(ratio - b) < 0.05 * b:
                hint = ("your noise was not divided by the batch size: add noise of std sigma * C to the SUM of "
                        "clipped gradients and divide the total by the batch size (or add sigma * C / B after averaging).")
            elif abs(ratio - b / clip) < 0.05 * b / clip:
                hint = ("your noise has standard deviation noise_multiplier (not sigma * C) and was not divided by the "
                        "batch size: add N(0, (sigma * C)^2) to the sum, then divide everything by the batch size.")
            elif abs(ratio - b ** 0.5) < 0.05 * b ** 0.5:
                hint = ("you added noise to every example's gradient: add ONE noise draw of std sigma * C to the sum "
                        "of clipped gradients (per-example noise is sqrt(B) times too large after averaging).")
            else:
                hint = (f"expected std sigma * C / B = {noise_multiplier:g} * {clip:g} / {b} = {expected:.3g}; "
                        "add N(0, (sigma * C)^2) to the sum of clipped gradients, then divide by the batch size.")
            _fail(exercise, f"(max_grad_norm = {clip:g}, noise_multiplier = {noise_multiplier:g}, batch {b}) the noise "
                  f"on your gradient has standard deviation {std:.3g} = {ratio:.3g} x the right one. " + hint)
        exact = _dp_close(first, _dp_flat(opacus_dp_gradient(model, x, y, clip, noise_multiplier,
                                                         torch.Generator().manual_seed(11))), 1e-6)
    message = (f"matches Opacus' per-example clipping and averaging (max_grad_norm {clip:g}, batch {b}), and the noise "
               f"has standard deviation {std:.3g} = {ratio:.3f} x sigma * C / B"
               + (", bit for bit the same noise as Opacus with the same generator." if exact else "."))
    return Feedback(exercise, True, message, {"max_grad_norm": clip, "noise_ratio": ratio, "same_as_opacus": exact}).show()


__all__ += ["dp_sgd_step"]


# ---------------------------------------------------------------------------------------------
# Exercise (lab 03b): epsilon of microbatched DP-SGD with dp_accounting
# ---------------------------------------------------------------------------------------------

# (n, batch_size, epochs, noise_multiplier, delta, num_microbatches): per-example clipping, the TF
# Privacy tutorial's 25 microbatches of 10, and a small data set over two epochs.
DP_SGD_EPSILON_CASES = (
    (60_000, 512, 1, 0.7, 1e-5, 512),
    (60_000, 250, 1, 1.1, 1e-5, 25),
    (10_000, 128, 2, 1.0, 1e-4, 128),
)


def dp_sgd_epsilon(fn: Callable, rtol: float = 0.01) -> Feedback:
    """Check a learner's `fn(n, batch_size, epochs, noise_multiplier, delta, num_microbatches) -> epsilon`
    (Poisson-sampled DP-SGD, RDP accounting, microbatch sensitivity) against dp_accounting."""
    import math

    import dp_accounting

    from .privacy_tf import dp_sgd_epsilon as reference

    exercise = "dp_sgd_epsilon"
    if not callable(fn):
        _fail(exercise, f"pass your function itself, e.g. check.{exercise}({exercise}), not a {type(fn).__name__}.")

    def rdp(event, delta):
        return float(dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta))

    def variant(n, b, e, sigma, delta, q=None, steps=None):
        q = b / n if q is None else q
        steps = math.ceil(e * n / b) if steps is None else steps
        return rdp(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps), delta)

    results = []
    for n, b, e, sigma, delta, m in DP_SGD_EPSILON_CASES:
        where = f"(n={n}, batch_size={b}, epochs={e}, noise_multiplier={sigma}, delta={delta}, num_microbatches={m})"
        try:
            got = fn(n, b, e, sigma, delta, m)
        except NotImplementedError as err:
            _fail(exercise, "this exercise is still TODO: replace the `raise NotImplementedError` line with your code.",
                  err)
        except Exception as err:  # noqa: BLE001 - any learner error becomes feedback
            _fail(exercise, f"your function raised {type(err).__name__}: {err} {where}", err)
        if got is None:
            _fail(exercise, "your function returned None: return the epsilon as a float.")
        if isinstance(got, (tuple, list)):
            _fail(exercise, "return only epsilon (a float), not a tuple: get_epsilon(delta) gives it directly.")
        try:
            got = float(got)
        except (TypeError, ValueError) as err:
            _fail(exercise, f"return epsilon as a number, not a {type(got).__name__}.", err)
        want = reference(n, b, e, sigma, delta, m)
        results.append((where, got, want))
        if abs(got - want) <= rtol * want:
            continue
        micro = b // m > 1
        close = lambda value: abs(got - value) <= rtol * value  # noqa: E731
        if micro and close(variant(n, b, e, sigma, delta)):
            _fail(exercise, f"{where}: you got {got:.3f}, the epsilon without microbatching, but TF Privacy's "
                  f"answer is {want:.3f}. With microbatches of {b // m} examples one example can change a "
                  "microbatch's clipped gradient by up to 2C, so the sensitivity doubles: account with "
                  "noise_multiplier / 2 when batch_size // num_microbatches > 1.")
        if not micro and close(variant(n, b, e, sigma / 2, delta)):
            _fail(exercise, f"{where}: you got {got:.3f}, but with one example per microbatch the sensitivity is "
                  f"C, not 2C ({want:.3f}): halve the noise multiplier only when microbatches hold more than "
                  "one example.")
        for wrong_q, why in ((m / n, "num_microbatches / n"), (1 / m, "1 / num_microbatches")):
            for s in (sigma, sigma / 2):
                if close(variant(n, b, e, s, delta, q=wrong_q)):
                    _fail(exercise, f"{where}: your sampling rate looks like {why}; each example is sampled with "
                          "probability q = batch_size / n, whatever the microbatching.")
        sigma_eff = sigma / 2 if micro else sigma
        for wrong_steps, why in ((e, "epochs"), (math.ceil(n / b), "one epoch's steps"),
                                 (math.ceil(e * n / m), "epochs * n / num_microbatches")):
            if wrong_steps != math.ceil(e * n / b) and close(variant(n, b, e, sigma_eff, delta, steps=wrong_steps)):
                _fail(exercise, f"{where}: your number of steps looks like {why}; DP-SGD takes "
                      "ceil(epochs * n / batch_size) steps, one Poisson-sampled Gaussian event each.")
        no_sampling = rdp(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma_eff),
                                                            math.ceil(e * n / b)), delta)
        if close(no_sampling):
            _fail(exercise, f"{where}: you composed plain Gaussian events; wrap each step in "
                  "dp_accounting.PoissonSampledDpEvent(batch_size / n, ...) so that sampling amplifies privacy.")
        pld = float(dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3).compose(
            dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
                b / n, dp_accounting.GaussianDpEvent(sigma_eff)), math.ceil(e * n / b))).get_epsilon(delta))
        if abs(got - pld) <= 0.03 * pld:
            _fail(exercise, f"{where}: you got {got:.3f}, which looks like the PLD accountant; this exercise "
                  f"compares with TF Privacy's RDP figure ({want:.3f}): use dp_accounting.rdp.RdpAccountant().")
        _fail(exercise, f"{where}: you got {got:.3f}, dp_accounting's RDP accountant gives {want:.3f}. Build "
              "SelfComposedDpEvent(PoissonSampledDpEvent(batch_size / n, GaussianDpEvent(sigma)), "
              "ceil(epochs * n / batch_size)) with sigma halved for microbatches of more than one example, "
              "then RdpAccountant().compose(event).get_epsilon(delta).")
    message = "matches dp_accounting's RDP epsilon on all cases: " + "; ".join(
        f"{got:.3f} vs {want:.3f}" for _, got, want in results) + " (per example, 25 microbatches, small data)."
    return Feedback(exercise, True, message, {"results": results}).show()


__all__ += ["dp_sgd_epsilon"]


# ---------------------------------------------------------------------------------------------
# Exercise: spectral signatures (Tran, Li and Madry 2018), poisoning lab
# ---------------------------------------------------------------------------------------------

def _spectral_bench(seed: int, n: int = 300, d: int = 12, n_poison: int = 18) -> np.ndarray:
    """One class's representations: an anisotropic clean cloud away from the origin, and a small
    shifted sub-population (the poison), so each typical mistake gives a different answer."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(2.0, 0.5, d)
    reps = rng.normal(size=(n, d)) * scales + rng.normal(3.0, 1.0, size=d)
    shift = rng.normal(size=d)
    reps[:n_poison] += 4.0 * shift / np.linalg.norm(shift) * scales.max()
    return reps


def _as_scores(exercise: str, out, n: int) -> np.ndarray:
    if out is None:
        _fail(exercise, "your function returned None: return the array of scores (one per row).")
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().numpy()
    try:
        out = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as e:
        _fail(exercise, f"return a numpy array of scores, not a {type(out).__name__}.", e)
    if out.ndim == 2 and 1 in out.shape:
        out = out.reshape(-1)
    if out.shape != (n,):
        _fail(exercise, f"expected one score per sample, shape ({n},); got {out.shape}. Project every centred row "
              "onto the top right singular vector: centred @ vt[0] (the wrong axis gives one value per feature).")
    if not np.all(np.isfinite(out)):
        _fail(exercise, "some scores are NaN or infinite.")
    return out


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-8 * max(1.0, float(np.abs(b).max()))))


def spectral_signatures(fn: Callable) -> Feedback:
    """Check a learner's `fn(reps) -> scores`: reps (n, d) holds one class's representations; the
    score of row i is ((reps[i] - mean) . v)^2 with v the top right singular vector of the centred
    matrix (Tran et al. 2018). Compared with `labkit.poisoning.spectral_signature_scores`."""
    from .poisoning import spectral_signature_scores as reference

    exercise = "spectral_signatures"
    if not callable(fn):
        _fail(exercise, "pass your function itself, e.g. check.spectral_signatures(spectral_signatures).")
    for seed in (0, 1):
        reps = _spectral_bench(seed)
        before = reps.copy()
        try:
            out = fn(reps.copy())
        except NotImplementedError as e:
            _fail(exercise, "this exercise is still TODO: replace the `raise NotImplementedError` line with your code.", e)
        out = _as_scores(exercise, out, len(reps))
        ref = reference(before)
        if _close(out, ref):
            continue
        centred = before - before.mean(axis=0)
        u, s, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        _, _, vt_raw = np.linalg.svd(before, full_matrices=False)
        row_centred = before - before.mean(axis=1, keepdims=True)
        _, _, vt_row = np.linalg.svd(row_centred, full_matrices=False)
        if _close(out, (before @ vt_raw[0]) ** 2) or _close(out, (before @ vt_raw[0] - (before @ vt_raw[0]).mean()) ** 2):
            _fail(exercise, "the representations were not centred before the SVD: subtract the mean over the samples "
                  "(reps - reps.mean(axis=0)), or the top singular vector just points at the mean.")
        if _close(out, (row_centred @ vt_row[0]) ** 2):
            _fail(exercise, "you centred along the wrong axis: subtract the mean of each feature over the samples, "
                  "reps.mean(axis=0), not the mean of each row (axis=1).")
        if _close(np.abs(out), np.abs(proj)) or _close(out, np.abs(proj)):
            _fail(exercise, "the scores are the projections themselves (or their absolute value): square them, "
                  "(centred @ v) ** 2, as Tran et al. do, so the score is the squared outlier distance.")
        if _close(out, u[:, 0] ** 2) or _close(out, np.abs(u[:, 0])) or _close(out, (s[0] * u[:, 0]) ** 2 / s[0]):
            _fail(exercise, "you used the left singular vector u[:, 0]: it is the projection divided by the singular "
                  "value, a different scale. Use the top RIGHT singular vector v = vt[0] (rows of vt) and score "
                  "(centred @ v) ** 2.")
        if _close(out, (centred @ vt[:, 0]) ** 2):
            _fail(exercise, "you took a column of vt (vt[:, 0]); the right singular vectors are its ROWS: v = vt[0].")
        if _close(out, (centred @ vt[-1]) ** 2):
            _fail(exercise, "you used the LAST singular vector: numpy sorts singular values largest first, so the top "
                  "one is vt[0].")
        corr = np.corrcoef(out, ref)[0, 1] if np.std(out) > 0 else 0.0
        _fail(exercise, f"your scores differ from the reference (correlation {corr:.2f}). Centre the rows with "
              "reps - reps.mean(axis=0), take np.linalg.svd(centred, full_matrices=False), v = vt[0], and return "
              "(centred @ v) ** 2.")
    top = np.argsort(-out)[:18]
    message = (f"matches the reference spectral-signature scores on two fixed classes; {np.mean(top < 18):.0%} of "
               "the planted outliers rank in the top 18.")
    return Feedback(exercise, True, message).show()


__all__.append("spectral_signatures")
