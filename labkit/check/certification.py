"""Checks for the certified-robustness lab (09): randomized smoothing's PREDICT and CERTIFY
(Cohen, Rosenfeld and Kolter 2019).

The base model of these checks is scripted: it answers each noisy copy it is shown with the next
label of a fixed stream, whatever the pixels. The counts a correct function sees are then known
exactly, so its answer can be compared with the reference to the last digit, and the typical
mistakes (one sample set for selection and estimation, a normal approximation, a two-sided bound,
no abstention, a radius without sigma) each give a different, recognisable number.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from .common import ExerciseFailed, Feedback, call, fail

ABSTAIN = -1
RTOL = 1e-6


class ScriptedModel(nn.Module):
    """A base model that predicts, for the k-th input it ever sees, the k-th label of `stream`;
    it records how many inputs it saw and how far they lay from the clean image."""

    def __init__(self, stream: np.ndarray, clean: torch.Tensor, exercise: str, num_classes: int = 10):
        super().__init__()
        self.stream, self.clean, self.exercise, self.num_classes = np.asarray(stream), clean, exercise, num_classes
        self.seen = 0
        self.calls: list[int] = []
        self.noise_sq, self.noise_count = 0.0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        b = len(x)
        if self.seen + b > len(self.stream):
            fail(self.exercise, f"your function ran the base model on more than {len(self.stream)} noisy copies: "
                 "draw exactly the sample counts the exercise gives (n0 for selection, then n for estimation).")
        labels = torch.as_tensor(self.stream[self.seen:self.seen + b])
        self.seen += b
        self.calls.append(b)
        d = (x.detach().float() - self.clean.to(x.device)).reshape(b, -1)
        self.noise_sq += float((d ** 2).sum())
        self.noise_count += d.numel()
        return nn.functional.one_hot(labels, self.num_classes).float().to(x.device) * 10.0

    @property
    def noise_std(self) -> float:
        return math.sqrt(self.noise_sq / max(self.noise_count, 1))


def _stream(counts: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    labels = np.concatenate([np.full(k, c, dtype=np.int64) for c, k in counts.items()])
    return rng.permutation(labels)


def _clean() -> torch.Tensor:
    return torch.full((1, 28, 28), 0.5)


def _references():
    from .. import smoothing

    return [(smoothing.predict, "labkit.smoothing.predict"), (smoothing.certify, "labkit.smoothing.certify"),
            (smoothing.lower_confidence_bound, "labkit.smoothing.lower_confidence_bound"),
            (smoothing.radius, "labkit.smoothing.radius")]


def _noise_problem(model: ScriptedModel, sigma: float) -> str | None:
    std = model.noise_std
    if std < 1e-6:
        return ("the base model was run on the clean image: add Gaussian noise to every copy, "
                "x + sigma * torch.randn(..., generator=generator).")
    if abs(std - sigma) > 0.1 * sigma:
        return (f"the noise you added has standard deviation {std:.3f} but sigma is {sigma:g}: multiply standard "
                "normal noise by sigma (not sigma squared, not uniform noise), and do not clip the noisy copies.")
    return None


# ---------------------------------------------------------------------------------------------
# Exercise: PREDICT with abstention
# ---------------------------------------------------------------------------------------------

def _reference_predict(counts: np.ndarray, alpha: float) -> int:
    top = np.argsort(counts)[::-1][:2]
    n_a, n_b = int(counts[top[0]]), int(counts[top[1]])
    return ABSTAIN if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha else int(top[0])


def _as_class(exercise: str, out) -> int:
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        out = out.item()
    if isinstance(out, (np.integer,)):
        out = int(out)
    if isinstance(out, tuple):
        fail(exercise, f"return one class index (or -1 to abstain), not a tuple of {len(out)} items.")
    if not isinstance(out, int) or isinstance(out, bool):
        fail(exercise, f"return the predicted class as an int (or -1 to abstain), not a {type(out).__name__}.")
    return out


def smoothing_predict(fn: Callable, sigma: float = 0.25, n: int = 1000, alpha: float = 0.001) -> Feedback:
    """Check `fn(model, x, sigma, n, alpha, generator) -> class or -1` (Cohen et al.'s PREDICT):
    the top class of n noisy samples, or -1 when a two-sided binomial test of the top count
    against the runner-up (p = 1/2) does not reject at level alpha."""
    exercise = "smoothing_predict"
    expected = "predict(model, x, sigma, n, alpha, generator)"
    rng = np.random.default_rng(9)
    cases = [  # (counts, what the case is about)
        ({4: 900, 1: 60, 8: 40}, "a clear majority"),
        ({2: 520, 6: 480}, "a near tie"),
        ({3: 520, 7: 300, 9: 180}, "a top class without a majority of all samples"),
    ]
    with torch.random.fork_rng(devices=[]):
        for counts, about in cases:
            stream = _stream(counts, rng)
            model = ScriptedModel(stream, _clean(), exercise)
            gen = torch.Generator().manual_seed(0)
            out = _as_class(exercise, call(exercise, fn, (model, _clean(), sigma, n, alpha, gen), expected, _references()))
            if model.seen != n:
                fail(exercise, f"your function ran the base model on {model.seen} noisy copies; PREDICT draws "
                     f"exactly n = {n}.")
            problem = _noise_problem(model, sigma)
            if problem:
                fail(exercise, problem)
            full = np.bincount(stream, minlength=10)
            want = _reference_predict(full, alpha)
            if out == want:
                continue
            shown = ", ".join(f"class {c}: {k}" for c, k in counts.items())
            if want == ABSTAIN and out == int(full.argmax()):
                fail(exercise, f"({about}: {shown}) you returned class {out} where PREDICT abstains: the top two "
                     f"counts cannot be told apart at alpha = {alpha:g}. Test the top count against the runner-up, "
                     "binomtest(n_A, n_A + n_B, 0.5).pvalue, and return -1 when it is above alpha.")
            if want != ABSTAIN and out == ABSTAIN:
                if binomtest(int(full.max()), n, 0.5).pvalue > alpha:
                    fail(exercise, f"({about}: {shown}) you abstained where PREDICT answers {want}: the test "
                         "compares the top count with the runner-up, binomtest(n_A, n_A + n_B, 0.5), not with all "
                         "n samples.")
                fail(exercise, f"({about}: {shown}) you abstained where PREDICT answers {want}: abstain only when "
                     "binomtest(n_A, n_A + n_B, 0.5).pvalue > alpha.")
            fail(exercise, f"({about}: {shown}) you returned {out}; PREDICT returns {want}, the most frequent class "
                 "of the noisy samples (or -1 to abstain).")
    return Feedback(exercise, True, f"matches PREDICT on a clear majority, a near tie (abstains) and a top class "
                    f"without an overall majority (n = {n}, alpha = {alpha:g}, noise sigma {sigma:g}).").show()


# ---------------------------------------------------------------------------------------------
# Exercise: CERTIFY
# ---------------------------------------------------------------------------------------------

def _cp_lower(k: int, n: int, alpha: float) -> float:
    return 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))


def _radius(p: float, sigma: float) -> float:
    return float(sigma * norm.ppf(p)) if p > 0.5 else 0.0


def _as_certificate(exercise: str, out) -> tuple[int, float]:
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        fail(exercise, f"return a pair (class, radius), e.g. `return c_a, radius` or `return -1, 0.0`; "
             f"got {type(out).__name__}.")
    c, r = out
    c = _as_class(exercise, c)
    if isinstance(r, torch.Tensor):
        r = r.item()
    try:
        r = float(r)
    except (TypeError, ValueError):
        fail(exercise, f"the radius must be a number; got {type(r).__name__}.")
    return c, r


def _diagnose_certify(c: int, r: float, sel: dict, est: dict, n0: int, n: int, alpha: float, sigma: float,
                      stream: np.ndarray, seen: int) -> str | None:
    c_a = max(sel, key=sel.get)
    k = est.get(c_a, 0)
    p = _cp_lower(k, n, alpha)
    want = (c_a, _radius(p, sigma)) if p >= 0.5 else (ABSTAIN, 0.0)
    if c == want[0] and abs(r - want[1]) <= RTOL * max(1.0, abs(want[1])):
        return None
    if seen != n0 + n:
        if seen == n:
            return (f"the base model saw {seen} noisy copies, n alone: you used the same samples to choose the class "
                    "and to bound its probability, which biases the bound upwards. Draw n0 samples to pick c_A, then "
                    "n fresh samples to count it.")
        if seen == n0:
            return (f"the base model saw only n0 = {n0} noisy copies: bound p_A from n = {n} fresh estimation "
                    "samples, not from the selection samples.")
        return (f"the base model saw {seen} noisy copies; CERTIFY draws n0 = {n0} to select the class, then "
                f"n = {n} to estimate it ({n0 + n} in all).")
    first = int(np.bincount(stream[n0:n0 + n], minlength=10).argmax())
    if c != ABSTAIN and c != c_a and c == first:
        return ("you picked the class from the estimation samples: choose c_A from the n0 selection samples "
                "(the first draw), then count it in the n estimation samples.")
    if want[0] == ABSTAIN:
        if c != ABSTAIN:
            return (f"the lower bound on p_A is {p:.3f} < 1/2 but you returned class {c} (radius {r:.3f}): CERTIFY "
                    "must abstain, return (-1, 0.0), when it cannot show p_A > 1/2.")
        return f"abstain with radius 0.0 (you returned radius {r:g})."
    if c == ABSTAIN:
        return (f"you abstained, but the lower bound on p_A is {p:.4f} > 1/2: certify class {want[0]} with radius "
                f"sigma * Phi^-1(p_A lower) = {want[1]:.4f}.")
    if c != want[0]:
        return f"you certified class {c}; the selection samples' top class is {want[0]}."
    target = want[1]
    if abs(r - target / sigma) <= 1e-4 * max(1.0, abs(target)):
        return (f"your radius {r:.4f} is Phi^-1(p_A lower) without sigma: the certified radius is "
                f"sigma * Phi^-1(p_A lower) = {target:.4f} (sigma = {sigma:g}).")
    two_sided = _radius(_cp_lower(k, n, alpha / 2), sigma)
    if abs(r - two_sided) <= 1e-4:
        return (f"your bound is the lower end of a two-sided interval at level alpha (alpha / 2 in each tail): CERTIFY "
                f"needs a one-sided (1 - alpha) lower bound, beta.ppf(alpha, k, n - k + 1), i.e. "
                f"proportion_confint(k, n, alpha=2 * alpha, method='beta')[0].")
    p_hat = k / n
    normal = p_hat - norm.ppf(1 - alpha) * math.sqrt(p_hat * (1 - p_hat) / n)
    normal2 = p_hat - norm.ppf(1 - alpha / 2) * math.sqrt(p_hat * (1 - p_hat) / n)
    if math.isinf(r) or any(abs(r - _radius(min(q, 1 - 1e-16), sigma)) <= 1e-4 for q in (normal, normal2, p_hat)):
        return (f"your radius {r:.4f} comes from a normal approximation (or the raw share {p_hat:.3f}), not the "
                "Clopper-Pearson bound: near p = 1 the normal interval collapses and certifies far too much (with "
                "every sample agreeing it even gives an infinite radius). Use the exact one-sided bound "
                "beta.ppf(alpha, k, n - k + 1).")
    return (f"your radius is {r:.4f}; the reference is {target:.4f} (k = {k} of n = {n}, one-sided Clopper-Pearson "
            f"lower bound {p:.4f} at alpha = {alpha:g}, times sigma = {sigma:g} through Phi^-1).")


def smoothing_certify(fn: Callable, sigma: float = 0.5, n0: int = 100, n: int = 1000,
                      alpha: float = 0.001) -> Feedback:
    """Check `fn(model, x, sigma, n0, n, alpha, generator) -> (class, radius)` (Cohen et al.'s
    CERTIFY): n0 selection samples pick c_A, n fresh samples count it, a one-sided (1 - alpha)
    Clopper-Pearson lower bound p_A, radius sigma * Phi^-1(p_A), (-1, 0.0) below 1/2."""
    exercise = "smoothing_certify"
    expected = "certify(model, x, sigma, n0, n, alpha, generator)"
    rng = np.random.default_rng(19)
    cases = [  # (selection counts, estimation counts, what the case is about)
        ({3: 90, 7: 10}, {3: 820, 7: 180}, "a typical certified image"),
        ({2: 100}, {2: 1000}, "every sample agrees"),
        ({5: 60, 1: 40}, {5: 480, 1: 520}, "a bound below 1/2"),
        ({8: 55, 0: 45}, {0: 640, 8: 360}, "selection and estimation disagree"),
    ]
    results = []
    with torch.random.fork_rng(devices=[]):
        for sel, est, about in cases:
            sel_n, est_n = sum(sel.values()), sum(est.values())
            assert sel_n == n0 and est_n == n
            stream = np.concatenate([_stream(sel, rng), _stream(est, rng), _stream({9: n}, rng)])
            model = ScriptedModel(stream, _clean(), exercise)
            gen = torch.Generator().manual_seed(0)
            out = call(exercise, fn, (model, _clean(), sigma, n0, n, alpha, gen), expected, _references())
            c, r = _as_certificate(exercise, out)
            problem = _noise_problem(model, sigma)
            if problem:
                fail(exercise, problem)
            problem = _diagnose_certify(c, r, sel, est, n0, n, alpha, sigma, stream, model.seen)
            if problem:
                fail(exercise, f"({about}) {problem}")
            results.append(r)
    cap = _radius(alpha ** (1 / n), sigma)
    return Feedback(exercise, True, f"matches CERTIFY to the last digit on four scripted images (radius {results[0]:.3f}; "
                    f"every sample agreeing gives the cap {cap:.3f}; abstains below 1/2; picks the class from the "
                    f"selection samples) at sigma {sigma:g}, n0 = {n0}, n = {n}, alpha = {alpha:g}.",
                    {"radii": results}).show()


__all__ = ["smoothing_predict", "smoothing_certify", "ScriptedModel", "ExerciseFailed"]
