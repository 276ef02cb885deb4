"""What every check shares: the verdict types, calling the learner's function safely, noticing
the kit's own answer, recording each verdict for `labkit check`, and the fixed digit-like bench.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Pixel values equal within this are "the same"; FGSM's result is exact up to float rounding.
ATOL = 1e-5

# The one sentence for an exercise whose TODO line is still there, whatever the check.
TODO_MESSAGE = "not done yet: this exercise is still TODO. Replace the `raise NotImplementedError` line with your code."

# `labkit check` sets this to a file where each check appends its verdict (one JSON line).
LOG_ENV = "LABKIT_CHECK_LOG"


class ExerciseFailed(AssertionError):
    """A learner's function does not do what the exercise asks; the message says what to change."""

    def __init__(self, message: str, exercise: str = "", sentence: str = ""):
        super().__init__(message)
        self.exercise, self.sentence = exercise, sentence or message


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
        _record(self.exercise, self.passed, self.message)
        return self

    def _ipython_display_(self):  # the check already printed it; show it once only
        if not self._printed:
            print(str(self))


def _record(exercise: str, passed: bool, message: str) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"exercise": exercise, "passed": passed, "message": message, "time": time.time()}) + "\n")
    except OSError:  # grading bookkeeping must never break the learner's notebook
        pass


def fail(exercise: str, message: str, cause: BaseException | None = None):
    """Raise ExerciseFailed with the sentence (and record it for `labkit check`)."""
    _record(exercise, False, message)
    err = ExerciseFailed(f"✗ {exercise}: {message}", exercise, message)
    if cause is not None:
        raise err from cause
    raise err


def require_callable(exercise: str, fn, example: str | None = None) -> None:
    if not callable(fn):
        example = example or f"check.{exercise}({exercise})"
        fail(exercise, f"pass your function itself, e.g. {example}, not a {type(fn).__name__}.")


def check_signature(exercise: str, fn: Callable, args: tuple, expected: str) -> None:
    """Fail with the expected signature when `fn` cannot take the arguments the check passes."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: just call them
        return
    try:
        sig.bind(*args)
    except TypeError:
        name = getattr(fn, "__name__", "your function")
        fail(exercise, f"your function has the signature {name}{sig}, but the check calls it as {expected}: "
             "keep the signature the exercise gives.")


# ---- the kit's own answer ---------------------------------------------------------------------

class watch_for:
    """Notice, while the learner's code runs, a call into one of the kit's reference functions.

    A profile hook sees every Python call whatever name or import path reached it, so
    `from labkit.attacks import fgsm_reference` is noticed as well as `attacks.fgsm_reference`.
    """

    def __init__(self, references: Iterable[tuple[Callable, str]]):
        self.codes = {}
        for fn, label in references:
            code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__func__", None), "__code__", None)
            if code is not None:
                self.codes[code] = label
        self.hit: str | None = None
        self.c_calls: set[str] = set()

    def _profile(self, frame, event, arg):
        if event == "call" and self.hit is None:
            self.hit = self.codes.get(frame.f_code)
        elif event == "c_call":
            self.c_calls.add(getattr(arg, "__name__", ""))
        if self._previous is not None:
            self._previous(frame, event, arg)

    def __enter__(self):
        self._previous = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._previous)
        return False


def reference_used(exercise: str, label: str) -> None:
    fail(exercise, f"your function calls the kit's own answer ({label}): this exercise asks you to write it "
         "yourself. The reference is what the check compares with, so calling it proves nothing; write the "
         "steps the exercise lists.")


def call(exercise: str, fn: Callable, args: tuple, expected: str, references: Iterable[tuple[Callable, str]] = (),
         grad_hint: bool = False):
    """Call the learner's function; translate the usual exceptions into advice and name a call
    into the kit's reference answer."""
    require_callable(exercise, fn)
    check_signature(exercise, fn, args, expected)
    watch = watch_for(references)
    try:
        with watch:
            out = fn(*args)
    except NotImplementedError as e:
        fail(exercise, TODO_MESSAGE, e)
    except ExerciseFailed:
        raise
    except RuntimeError as e:
        text = str(e)
        if grad_hint and ("does not require grad" in text or "does not have a grad_fn" in text):
            fail(exercise, "autograd has nothing to differentiate: make a copy of the input that requires "
                 "gradients (x_adv = x.clone().detach().requires_grad_(True)) before the forward pass, and "
                 "do not compute the loss under torch.no_grad().", e)
        fail(exercise, f"your function raised RuntimeError: {text}", e)
    except Exception as e:  # noqa: BLE001 - any learner error becomes feedback
        fail(exercise, f"your function raised {type(e).__name__}: {e}", e)
    if watch.hit:
        reference_used(exercise, watch.hit)
    return out


# ---- the fixed test bench: a small seeded CNN, fitted briefly to a synthetic digit-like batch --

def digit_like_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n digit-like images from the current torch RNG: mostly exact 0 background, bright 1.0
    strokes, some grey edges (so a step that forgets to clip really leaves [0, 1]); random labels."""
    strokes = (torch.rand(n, 1, 28, 28) < 0.18).float()
    grey = torch.rand(n, 1, 28, 28) * (torch.rand(n, 1, 28, 28) < 0.12).float()
    return torch.maximum(strokes, grey), torch.randint(0, 10, (n,))


@functools.lru_cache(maxsize=1)
def _bench_state():
    from ..models import SmallCNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        x, y = digit_like_batch(64)
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


def bench():
    """A fresh copy of the bench model (eval mode) and the batch, so learners cannot spoil it."""
    from ..models import SmallCNN

    state, x, y = _bench_state()
    model = SmallCNN()
    model.load_state_dict(state)
    model.eval()
    return model, x.clone(), y.clone()


class Recorder(nn.Module):
    """Wraps the bench model and keeps a copy of every input it is run on: the check can see the
    random start an attack used, however the learner drew it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def loss(model, x, y) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def input_grad(model, x, y) -> torch.Tensor:
    xg = x.clone().detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    return g


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def agree(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of pixels where two image batches agree."""
    return ((a - b).abs() <= ATOL).float().mean().item()


def validate_images(exercise: str, out, x: torch.Tensor, x_before: torch.Tensor, model: nn.Module,
                    params_before: list[torch.Tensor], eps: float, project_hint: str | None) -> torch.Tensor:
    """Checks every perturbation exercise shares: type, shape, dtype, graph, side effects, range,
    budget (skipped when project_hint is None: the caller judges the budget itself)."""
    if out is None:
        fail(exercise, "your function returned None: did you forget `return x_adv`?")
    if isinstance(out, np.ndarray):
        fail(exercise, "return a torch tensor (the same type as x), not a numpy array.")
    if isinstance(out, (tuple, list)):
        fail(exercise, f"return only the adversarial images, not a {type(out).__name__} of {len(out)} items.")
    if not isinstance(out, torch.Tensor):
        fail(exercise, f"return a torch tensor, not a {type(out).__name__}.")
    if tuple(out.shape) != tuple(x.shape):
        fail(exercise, f"x_adv has shape {tuple(out.shape)} but x has shape {tuple(x.shape)}: return one "
             "adversarial image per input image, shaped like x (check for a stray squeeze, flatten or argmax).")
    if out.dtype != x.dtype:
        fail(exercise, f"x_adv has dtype {out.dtype} but x has dtype {x.dtype}: keep the images as {x.dtype}.")
    if out.requires_grad or out.grad_fn is not None:
        fail(exercise, "x_adv is still attached to the autograd graph (it requires grad): return x_adv.detach(), "
             "or do the step inside `with torch.no_grad():`.")
    if model.training:
        fail(exercise, "the model was in eval mode and your function left it in train mode: an attack must not "
             "change the model, so remove the model.train() call.")
    for before, p in zip(params_before, model.parameters()):
        if not torch.equal(before, p.detach()):
            fail(exercise, "your function changed the model's weights: an attack computes the gradient with "
                 "respect to the input only; do not call optimizer.step() or edit the parameters.")
    if not torch.equal(x, x_before):
        fail(exercise, "your function modified the input x in place: work on a copy (x.clone()) so that the "
             "clean images stay clean.")
    if torch.isnan(out).any():
        fail(exercise, "x_adv contains NaN values: check the gradient computation.")
    low, high = out.min().item(), out.max().item()
    # The bench images have many pixels at exactly 1.0: a result that stays within [-eps, eps]
    # and goes negative is the perturbation, not an image.
    if low < -ATOL and max(abs(low), abs(high)) <= eps + ATOL and x.max().item() > eps + 0.1:
        fail(exercise, f"you returned the perturbation (its values lie in [-{eps:g}, {eps:g}]) instead of the "
             "adversarial image: return the image itself, (x + delta).clamp(0, 1).")
    if low < -ATOL or high > 1 + ATOL:
        fail(exercise, f"your step moves pixels outside [0, 1] (they range from {low:.3f} to {high:.3f}): "
             "images only have valid pixels in [0, 1], so clip after the step, e.g. x_adv.clamp(0, 1).")
    if project_hint is not None:
        check_budget(exercise, out, x, eps, project_hint)
    return out


def check_budget(exercise: str, out: torch.Tensor, x: torch.Tensor, eps: float, project_hint: str) -> None:
    biggest = (out - x).abs().max().item()
    if biggest > eps + ATOL:
        fail(exercise, f"your perturbation is larger than eps: a pixel moved by {biggest:.3f} with eps = {eps:g}. "
             + project_hint)
    if biggest <= ATOL:
        fail(exercise, "x_adv equals x: your function did not perturb the images at all.")
