"""Checks for the evasion lab (01): FGSM, FGSM from a random start, and the training-loop perturbation."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .common import (ATOL, Feedback, Recorder, agree, bench, call, check_budget, fail, input_grad, loss, snapshot,
                     validate_images)


def _fgsm_references():
    from cleverhans.torch.attacks.fast_gradient_method import fast_gradient_method

    from .. import attacks

    return [(attacks.fgsm_reference, "labkit.attacks.fgsm_reference"),
            (fast_gradient_method, "cleverhans' fast_gradient_method"),
            (attacks.pgd, "labkit.attacks.pgd"), (attacks.fgsm_random_start, "labkit.attacks.fgsm_random_start")]


def _rs_references():
    from .. import attacks

    return [(attacks.fgsm_random_start, "labkit.attacks.fgsm_random_start"),
            (attacks.fgsm_reference, "labkit.attacks.fgsm_reference"), (attacks.pgd, "labkit.attacks.pgd")]


def _uniform_step(delta: torch.Tensor, out: torch.Tensor) -> float | None:
    """The one size (almost) every moved, unclipped pixel moved by, or None when sizes vary.
    Relative tolerance: a raw-gradient step is tiny everywhere but varies from pixel to pixel."""
    inside = (out > ATOL) & (out < 1 - ATOL)
    moved = inside & (delta.abs() > ATOL)
    if not moved.any():
        return None
    size = delta[moved].abs()
    median = size.median().item()
    uniform = ((size - median).abs() <= 0.01 * median + 1e-6).float().mean().item() > 0.9
    return median if uniform else None


# ---------------------------------------------------------------------------------------------
# Exercise: FGSM
# ---------------------------------------------------------------------------------------------

def _diagnose_fgsm(model, x, y, eps, out) -> str | None:
    """None when `out` is FGSM; otherwise a sentence saying what is different."""
    from ..attacks import fgsm_reference

    reference = fgsm_reference(model, x, eps, y=y)
    agreement = agree(out, reference)
    if agreement >= 0.999:
        return None
    grad = input_grad(model, x, y)
    descent = (x - eps * grad.sign()).clamp(0, 1)
    if agree(out, descent) >= 0.99:
        return ("wrong direction: you subtracted the gradient step, which lowers the loss and makes the model "
                "more sure of the right answer. FGSM climbs the loss: x + eps * grad.sign().")
    with torch.no_grad():
        predicted = model(x).argmax(1)
    if (predicted != y).any() and agree(out, fgsm_reference(model, x, eps, y=predicted)) >= 0.999:
        return "you attacked the model's predicted labels; this exercise gives you the true labels y: use them in the loss."
    delta = out - x
    inside = (out > ATOL) & (out < 1 - ATOL)  # pixels the [0, 1] clip did not touch
    moved = inside & (delta.abs() > ATOL)
    if moved.any():
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
        return (f"the largest pixel change is {biggest:.3f} but eps is {eps:g}: FGSM moves each pixel by "
                "exactly eps, eps * grad.sign().")
    clean_loss, adv_loss = loss(model, x, y), loss(model, out, y)
    if adv_loss <= clean_loss:
        return (f"the loss did not go up (clean {clean_loss:.3f}, yours {adv_loss:.3f}): FGSM must increase the "
                "loss on the true labels, x + eps * grad.sign() of the cross-entropy loss.")
    return (f"your x_adv differs from the reference FGSM (cleverhans) on {100 * (1 - agreement):.1f}% of the pixels. "
            "Compute the cross-entropy loss of model(x_adv) against y, take the gradient with respect to the "
            "input, step eps * grad.sign(), then clip to [0, 1].")


def _step_size_problem(runs) -> str | None:
    """When every pixel moved by one size that is not eps, say whether that size ignores eps
    (a hard-coded number) or scales it wrongly. runs: [(eps, x, out)] for different eps."""
    steps = [(eps, _uniform_step(out - x, out)) for eps, x, out in runs]
    if any(step is None or abs(step - eps) <= 1e-4 for eps, step in steps):
        return None
    shown = ", ".join(f"{step:.3f} at eps = {eps:g}" for eps, step in steps)
    if max(step for _, step in steps) - min(step for _, step in steps) <= 1e-4:
        return (f"every pixel moved by {steps[0][1]:.3f} whatever eps was ({shown}): you used a fixed number; "
                "use the eps argument, x + eps * grad.sign().")
    ratios = [step / eps for eps, step in steps]
    if max(ratios) - min(ratios) <= 1e-3 * max(ratios):
        return (f"every pixel moved by {ratios[0]:.3g} x eps ({shown}): FGSM moves each pixel by exactly eps; "
                "remove the extra factor, x + eps * grad.sign().")
    return (f"every pixel moved by one size that is not eps ({shown}): FGSM moves each pixel by exactly eps, "
            "x + eps * grad.sign().")


def fgsm(fn: Callable, eps_values: tuple[float, ...] = (0.2, 0.1)) -> Feedback:
    """Check a learner's `fn(model, x, y, eps) -> x_adv` against cleverhans' FGSM (L-infinity,
    untargeted, true labels, clipped to [0, 1]) on a fixed model and batch, for each eps."""
    exercise = "fgsm"
    project_hint = "FGSM moves each pixel by exactly eps: x + eps * grad.sign(), then clip to [0, 1]."
    runs = []
    with torch.random.fork_rng(devices=[]):
        for i, eps in enumerate(eps_values):
            model, x, y = bench()
            if i:
                x, y = x.flip(0), y.flip(0)  # a different batch order: catches a cached answer
            x_before, params = x.clone(), snapshot(model)
            out = call(exercise, fn, (model, x, y, eps), "fgsm(model, x, y, eps)", _fgsm_references(), grad_hint=True)
            out = validate_images(exercise, out, x, x_before, model, params, eps, None)
            runs.append((model, x, y, eps, out))
        problem = _step_size_problem([(eps, x, out) for _, x, _, eps, out in runs])
        if problem:
            fail(exercise, problem)
        for model, x, y, eps, out in runs:
            check_budget(exercise, out, x, eps, project_hint)
            problem = _diagnose_fgsm(model, x, y, eps, out)
            if problem:
                fail(exercise, f"(eps = {eps:g}) {problem}")
    message = (f"matches cleverhans' FGSM on every pixel at eps = {', '.join(f'{e:g}' for e in eps_values)} "
               "(stays in [0, 1], within eps, increases the loss).")
    return Feedback(exercise, True, message, {"eps_values": tuple(eps_values)}).show()


# ---------------------------------------------------------------------------------------------
# FGSM with a random start (Wong et al. 2020): what one call did, seen through the recorded model
# ---------------------------------------------------------------------------------------------

def _rs_start(recorder: Recorder, x: torch.Tensor) -> torch.Tensor | None:
    """The point the gradient was taken at: the last recorded model input that is not x itself."""
    for seen in reversed(recorder.inputs):
        if seen.shape == x.shape and not torch.equal(seen, x):
            return seen
    return None


def _start_problem(x: torch.Tensor, start: torch.Tensor, eps: float) -> str | None:
    """Is start - x uniform on [-eps, eps]? Judged on pixels that neither bound of [0, 1] can clip."""
    free = (x >= eps) & (x <= 1 - eps)
    d = (start - x)[free]
    if d.numel() < 200:
        return None
    if (d >= -ATOL).float().mean().item() > 0.98:
        return (f"your random start only goes up: every start pixel lies in [0, {eps:g}]. Draw delta from the "
                "whole ball [-eps, eps]: torch.empty_like(x).uniform_(-eps, eps).")
    if d.abs().max().item() > eps + ATOL:
        return (f"your random start leaves the eps-ball (a start pixel moved by {d.abs().max().item():.3f} with "
                f"eps = {eps:g}): a Gaussian start (torch.randn_like) is not bounded. Draw delta uniformly from "
                "[-eps, eps]: torch.empty_like(x).uniform_(-eps, eps).")
    sorted_d = d.sort().values.double()
    n = len(sorted_d)
    uniform_cdf = ((sorted_d + eps) / (2 * eps)).clamp(0, 1)
    empirical = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = (empirical - uniform_cdf).abs().max().item()
    if ks > 0.1:
        return (f"your random start is not uniform on [-eps, eps] (its standard deviation is {d.std().item():.3f}; "
                f"uniform gives eps / sqrt(3) = {eps / 3 ** 0.5:.3f}): a Gaussian start, clipped or not, or a "
                "narrower range, starts too close to x. Draw delta with torch.empty_like(x).uniform_(-eps, eps).")
    return None


def _rs_expected(inner, x, y, start, eps, alpha) -> torch.Tensor:
    g = input_grad(inner, start, y)
    return (x + ((start - x) + alpha * g.sign()).clamp(-eps, eps)).clamp(0, 1)


def _rs_step_problem(inner, x, y, start, out, eps, alpha, alpha_name: str) -> str | None:
    """None when `out` is one FGSM step of size alpha from `start`; else what the step did instead."""
    if agree(out, _rs_expected(inner, x, y, start, eps, alpha)) >= 0.99:
        return None
    g = input_grad(inner, start, y)
    d0 = start - x
    delta = out - x
    # pixels the projection and the [0, 1] clip left alone: there, out - start is the step itself
    free = (delta.abs() < eps - 1e-4) & (out > ATOL) & (out < 1 - ATOL) & (g != 0)
    step = (delta - d0)[free]
    if free.sum() < 50 and alpha < 2 * eps and agree(out, _rs_expected(inner, x, y, start, eps, 4 * eps)) >= 0.99:
        return (f"your step was far larger than {alpha_name} ({alpha:g}): every pixel ends on the edge of the "
                "eps-ball. Step alpha * grad.sign() from the random start, then project to [-eps, eps].")
    if free.sum() < 50 or step.abs().max().item() <= ATOL:
        return ("x_adv is the random start alone: after drawing delta, compute the loss at x + delta, take its "
                "gradient with respect to delta, and step alpha * grad.sign().")
    same_sign = (step.sign() == g[free].sign()).float().mean().item()
    if same_sign < 0.1:
        return ("wrong direction: you subtracted the gradient step, so the loss goes down. Training needs the "
                "hardest nearby images: delta + alpha * grad.sign().")
    size = step.abs()
    median = size.median().item()
    uniform = ((size - median).abs() <= 0.01 * median + 1e-6).float().mean().item() > 0.9
    if not uniform and same_sign > 0.9:
        return ("you stepped by the gradient itself instead of its sign: the step is alpha * grad.sign(), "
                "so every pixel moves by alpha.")
    if uniform and abs(median - alpha) > 1e-4:
        if abs(median - eps) <= 1e-4:
            return (f"your step was eps ({eps:g}) instead of {alpha_name} ({alpha:g}): step alpha * grad.sign() "
                    "from the random start, then project delta back to [-eps, eps].")
        return (f"every pixel stepped by {median:.3f}, but {alpha_name} is {alpha:g}: step alpha * grad.sign() "
                "from the random start.")
    return None


def fgsm_random_start(fn: Callable, eps: float = 0.3, alpha: float | None = None) -> Feedback:
    """Check a learner's `fn(model, x, y, eps, alpha) -> x_adv`, FGSM from a random start.

    The bench model keeps a copy of every input it sees, so the check knows the random start the
    learner drew: it must be uniform on [-eps, eps], the gradient taken there, one step of alpha
    times its sign, projected to the eps-ball and [0, 1]; and it must differ from call to call.
    """
    from ..attacks import fgsm_random_start as reference

    exercise = "fgsm_random_start"
    alpha = 1.25 * eps if alpha is None else alpha
    project_hint = ("The step alpha is larger than eps, so after the step project delta back onto the eps ball: "
                    "delta.clamp(-eps, eps), then clip x + delta to [0, 1].")
    expected = "fgsm_random_start(model, x, y, eps, alpha)"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inner, x, y = bench()
        model = Recorder(inner).eval()
        x_before, params = x.clone(), snapshot(model)
        first = validate_images(exercise, call(exercise, fn, (model, x, y, eps, alpha), expected, _rs_references(),
                                               grad_hint=True), x, x_before, model, params, eps, project_hint)
        start, ran_model = _rs_start(model, x), bool(model.inputs)
        model.inputs.clear()
        second = validate_images(exercise, call(exercise, fn, (model, x, y, eps, alpha), expected, _rs_references(),
                                                grad_hint=True), x, x_before, model, params, eps, project_hint)
        grad = input_grad(inner, x, y)
        plain = (x + eps * grad.sign()).clamp(0, 1)
        if agree(first, plain) >= 0.95:
            fail(exercise, "x_adv is plain FGSM: there is no random start. Start from x + delta with delta drawn "
                 "uniformly from [-eps, eps] (torch.empty_like(x).uniform_(-eps, eps)), step alpha * sign of the "
                 "gradient at that point, then project back to the eps ball.")
        if torch.equal(first, second):
            fail(exercise, "two calls gave exactly the same x_adv: draw the random start afresh on every call "
                 "(do not seed inside the function or reuse a fixed delta).")
        if start is None:
            if ran_model:
                fail(exercise, "you took the gradient at x, not at the random start: compute the loss at x + delta "
                     "and take its gradient with respect to delta, so the step starts from the random point.")
            fail(exercise, "x_adv looks like the random start alone (the model was never run): after drawing delta, "
                 "compute the loss at x + delta, take its gradient with respect to delta, and step "
                 "alpha * grad.sign().")
        problem = _start_problem(x, start, eps)
        if problem:
            fail(exercise, problem)
        problem = _rs_step_problem(inner, x, y, start, first, eps, alpha, "alpha")
        if problem:
            fail(exercise, problem)
        clean_loss = loss(inner, x, y)
        yours = (loss(inner, first, y) + loss(inner, second, y)) / 2
        ref = sum(loss(inner, reference(inner, x, y, eps, alpha), y) for _ in range(2)) / 2
        noise_loss = loss(inner, (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1), y)
        if yours - clean_loss < 0.5 * (ref - clean_loss):
            fail(exercise, f"your x_adv raises the loss from {clean_loss:.2f} to only {yours:.2f}; the reference "
                 f"reaches {ref:.2f}. Step alpha * grad.sign() from the random start (gradient taken at x + delta), "
                 "then clamp delta to [-eps, eps] and x + delta to [0, 1].")
    message = (f"random start uniform on [-{eps:g}, {eps:g}], one step of alpha = {alpha:g} along the gradient's "
               f"sign at it, within eps and [0, 1]: the loss goes from {clean_loss:.2f} to {yours:.2f} (reference "
               f"{ref:.2f}, random noise alone {noise_loss:.2f}).")
    return Feedback(exercise, True, message, {"clean_loss": clean_loss, "loss": yours, "reference_loss": ref,
                                              "noise_loss": noise_loss}).show()


adversarial_batch = fgsm_random_start  # the name the adversarial-training exercise may use


# ---------------------------------------------------------------------------------------------
# Exercise: the training loop's perturbation (lab 01): eps from the ramp, alpha = ratio * eps
# ---------------------------------------------------------------------------------------------

def perturb(fn: Callable, ramp, alpha_ratio: float = 1.25) -> Feedback:
    """Check a learner's `perturb(model, x, y) -> x_adv` before any training: it must take the
    training epsilon from `ramp` (a `labkit.train.Ramp`, one call per batch) and return FGSM-RS
    adversarial images with alpha = alpha_ratio * eps. The ramp is put back as it was afterwards."""
    from ..train import Ramp

    exercise = "perturb"
    if not isinstance(ramp, Ramp):
        fail(exercise, f"pass the notebook's epsilon ramp too: check.perturb(perturb, eps_now, P[\"alpha_ratio\"]) "
             f"(got a {type(ramp).__name__} instead of a labkit.train.Ramp).")
    saved = ramp.calls
    try:
        # Look at the ramp half-way up, where its value differs from the final eps.
        ramp.calls = ramp.steps // 2 if ramp.steps >= 2 else saved
        eps = ramp.value
        before_calls = ramp.calls
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            inner, x, y = bench()
            model = Recorder(inner).eval()
            x_before, params = x.clone(), snapshot(model)
            out = call(exercise, fn, (model, x, y), "perturb(model, x, y)", _rs_references(), grad_hint=True)
            used = ramp.calls - before_calls
            if used == 0:
                fail(exercise, "perturb never called eps_now(): the training epsilon must come from the ramp, one "
                     "call per batch (eps = eps_now()), so that it grows from 0 to eps over the first epochs.")
            if used > 1:
                fail(exercise, f"perturb called eps_now() {used} times for one batch: each call moves the ramp on, "
                     "so call it once per batch, keep the value (eps = eps_now()) and reuse it for alpha.")
            if isinstance(out, torch.Tensor) and out.shape == x.shape and torch.equal(out, x):
                fail(exercise, "perturb returned the clean batch: return fgsm_random_start(model, x, y, eps, alpha) "
                     "so that the model trains on adversarial images.")
            out = validate_images(exercise, out, x, x_before, model, params, eps,
                                  f"Use the ramp's value (eps = eps_now(), here {eps:.3f}) as the budget, not a "
                                  "fixed epsilon.")
            start = _rs_start(model, x)
            if start is None:
                fail(exercise, "perturb's images have no random start: call your fgsm_random_start (not fgsm) with "
                     "eps = eps_now() and alpha = alpha_ratio * eps.")
            problem = _rs_step_problem(inner, x, y, start, out, eps, alpha_ratio * eps,
                                       f"alpha = P[\"alpha_ratio\"] * eps = {alpha_ratio:g} * {eps:.3f}")
            if problem:
                fail(exercise, problem + " (If check.fgsm_random_start has not passed yet, fix that first.)")
    finally:
        ramp.calls = saved
    message = (f"takes eps from the ramp once per batch (eps = {eps:.3f} half-way up) and returns FGSM-RS images "
               f"with alpha = {alpha_ratio:g} * eps; the ramp is left as it was.")
    return Feedback(exercise, True, message, {"eps": eps}).show()
