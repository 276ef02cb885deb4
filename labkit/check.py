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

@functools.lru_cache(maxsize=1)
def _bench_state():
    from .models import SmallCNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        n = 64
        # Digit-like images: mostly exact 0 background, bright 1.0 strokes, some grey edges,
        # so that a step that forgets to clip really leaves [0, 1].
        strokes = (torch.rand(n, 1, 28, 28) < 0.18).float()
        grey = torch.rand(n, 1, 28, 28) * (torch.rand(n, 1, 28, 28) < 0.12).float()
        x = torch.maximum(strokes, grey)
        y = torch.randint(0, 10, (n,))
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
