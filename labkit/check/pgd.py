"""Checks for the CIFAR-10 ResNet lab (02): the learner's PGD and the adversarial training step.

`pgd(fn)` runs the learner's `fn(model, x, y, eps, alpha, steps) -> x_adv` on the fixed bench
model, which keeps a copy of every input it is run on. From those copies the check knows the
random start the learner drew and replays PGD from it with the update ART's
`ProjectedGradientDescent` makes (step alpha * sign of the input gradient of the cross-entropy,
projection onto the L-infinity ball around the clean x, clip to [0, 1]); it then runs ART's PGD
itself on the same images and compares the damage. When the result differs, the same replay with
one usual mistake put in (no projection, no random start, the gradient without its sign, no clip
to [0, 1], a descent step, projecting around the random start, one gradient for every step) names
what to change.

`adversarial_step(fn)` runs the learner's `fn(model, optimizer, x, y, attack) -> loss` once on a
copy of the bench model and compares the weights after the update with those of the reference
step: the mean of the cross-entropy on the clean batch and on `attack(model, x, y)`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .common import (ATOL, Feedback, Recorder, agree, bench, call, fail, input_grad, loss, snapshot, validate_images)
from .evasion import _start_problem

__all__ = ["pgd", "pgd_replay", "art_pgd", "adversarial_step"]

PROJECT_FIX = ("after every step project back onto the eps-ball around the clean image, "
               "x_adv = x + (x_adv - x).clamp(-eps, eps), then clip to [0, 1]")


def pgd_replay(model, x, y, start, eps, alpha, steps, *, sign=True, ascent=True, project=True, clip=True,
               center=None, frozen_grad=False) -> torch.Tensor:
    """PGD from a given start, with the switches that reproduce the usual mistakes (all True /
    default: the update of ART's ProjectedGradientDescent)."""
    center = x if center is None else center
    x_adv = start.clone()
    g0 = input_grad(model, start, y) if frozen_grad else None
    for _ in range(steps):
        g = g0 if frozen_grad else input_grad(model, x_adv, y)
        step = g.sign() if sign else g
        x_adv = x_adv + (alpha if ascent else -alpha) * step
        if project:
            x_adv = center + (x_adv - center).clamp(-eps, eps)
        if clip:
            x_adv = x_adv.clamp(0, 1)
    return x_adv.detach()


def art_pgd(model, x, y, eps, alpha, steps, random_init: bool = True, seed: int = 0) -> torch.Tensor:
    """ART's ProjectedGradientDescent (L-infinity, untargeted, true labels) on a float batch."""
    from art.attacks.evasion import ProjectedGradientDescent

    from ..attacks import _art_run

    make = lambda clf: ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps,  # noqa: E731
                                                num_random_init=int(random_init), batch_size=len(x), verbose=False)
    return _art_run(model, x, y, make, seed)


def _first_start(recorder: Recorder, x: torch.Tensor):
    """The first input the model saw that is not x itself (the random start), and whether x itself
    was the first point a gradient was taken at."""
    for seen in recorder.inputs:
        if seen.shape == x.shape and not torch.equal(seen, x):
            return seen
    return None


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _diagnose(inner, x, y, start, out, eps, alpha, steps) -> str | None:
    """None when `out` is PGD from `start`; else the sentence naming the mistake."""
    if agree(out, pgd_replay(inner, x, y, start, eps, alpha, steps)) >= 0.99:
        return None
    variants = [
        (dict(ascent=False), "gradient descent instead of ascent: you subtracted the step, so the loss goes down and "
         "the model grows more sure of the right class. PGD climbs the loss: x_adv + alpha * grad.sign()."),
        (dict(sign=False), "step without the sign: you added alpha * grad, and the raw gradient is tiny, so the images "
         "barely move. PGD steps alpha * grad.sign(), so every pixel moves by alpha."),
        (dict(center=start), "you projected onto the eps-ball around the random start instead of around the clean "
         "image: the budget is measured from x, x_adv = x + (x_adv - x).clamp(-eps, eps)."),
        (dict(frozen_grad=True), "you computed the gradient once and reused it: take the gradient again at the current "
         "x_adv in every step (that is what makes PGD stronger than FGSM)."),
        (dict(project=False), f"no projection: {PROJECT_FIX}."),
    ]
    for switches, sentence in variants:
        if agree(out, pgd_replay(inner, x, y, start, eps, alpha, steps, **switches)) >= 0.99:
            return sentence
    for other in (steps - 1, steps + 1):
        if other >= 1 and agree(out, pgd_replay(inner, x, y, start, eps, alpha, other)) >= 0.99:
            return (f"you took {other} steps, not steps = {steps}: run the update exactly `steps` times "
                    "(for _ in range(steps)).")
    if loss(inner, out, y) <= loss(inner, x, y):
        return ("the loss went down, not up: PGD steps along + alpha * grad.sign() of the cross-entropy on the true "
                "labels, from a random start, projecting and clipping after each step.")
    return (f"your x_adv differs from PGD replayed from your own random start on {100 * (1 - agree(out, pgd_replay(inner, x, y, start, eps, alpha, steps))):.1f}% "
            "of the pixels. Each step: loss = cross_entropy(model(x_adv), y); grad with respect to x_adv; "
            f"x_adv + alpha * grad.sign(); {PROJECT_FIX}.")


def pgd(fn: Callable, settings=((0.1, 0.025, 10), (0.06, 0.015, 7))) -> Feedback:
    """Check a learner's `fn(model, x, y, eps, alpha, steps) -> x_adv`: L-infinity PGD with a random
    start (Madry et al. 2018), against a replay from the learner's own start and ART's
    ProjectedGradientDescent, for each (eps, alpha, steps) in `settings`."""
    exercise = "pgd"
    expected = "pgd(model, x, y, eps, alpha, steps)"
    results = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for i, (eps, alpha, steps) in enumerate(settings):
            inner, x, y = bench()
            if i:
                x, y = x.flip(0), y.flip(0)  # a different batch order: catches a cached answer
            model = Recorder(inner).eval()
            x_before, params = x.clone(), snapshot(model)
            out = call(exercise, fn, (model, x, y, eps, alpha, steps), expected, grad_hint=True)
            if isinstance(out, torch.Tensor) and out.shape == x.shape and not out.requires_grad:
                low, high = out.min().item(), out.max().item()
                if (low < -ATOL or high > 1 + ATOL) and (out - x).abs().max().item() <= eps + ATOL:
                    fail(exercise, f"no clipping to [0, 1]: your pixels range from {low:.3f} to {high:.3f}, but an "
                         "image only has valid pixels in [0, 1]. After each projected step clip: x_adv.clamp(0, 1).")
            out = validate_images(exercise, out, x, x_before, model, params, eps, None)
            biggest = (out - x).abs().max().item()
            start = _first_start(model, x)
            if biggest > eps + ATOL and start is not None and agree(
                    out, pgd_replay(inner, x, y, start, eps, alpha, steps, center=start)) >= 0.99:
                fail(exercise, "you projected onto the eps-ball around the random start instead of around the clean "
                     "image, so pixels drift up to 2 * eps away: the budget is measured from x, "
                     "x_adv = x + (x_adv - x).clamp(-eps, eps).")
            if biggest > eps + ATOL:
                fail(exercise, f"no projection: a pixel moved by {biggest:.3f} with eps = {eps:g} ({steps} steps of "
                     f"{alpha:g} add up to more than eps); {PROJECT_FIX}.")
            if biggest <= ATOL:
                fail(exercise, "x_adv equals x: your function did not perturb the images at all.")
            if start is None or agree(out, pgd_replay(inner, x, y, x, eps, alpha, steps)) >= 0.99:
                fail(exercise, "no random start: your PGD starts from the clean image. Start from "
                     "x + delta with delta drawn uniformly from [-eps, eps] (torch.empty_like(x).uniform_(-eps, eps)), "
                     "clipped to [0, 1]; the random start is what lets restarts find different maxima.")
            problem = _start_problem(x, start, eps)
            if problem:
                fail(exercise, problem)
            problem = _diagnose(inner, x, y, start, out, eps, alpha, steps)
            if problem:
                fail(exercise, f"(eps = {eps:g}, alpha = {alpha:g}, steps = {steps}) {problem}")
            ref = art_pgd(inner, x, y, eps, alpha, steps, seed=i)
            yours_acc, art_acc = _accuracy(inner, out, y), _accuracy(inner, ref, y)
            yours_loss, art_loss = loss(inner, out, y), loss(inner, ref, y)
            if yours_acc > art_acc + 0.1:
                fail(exercise, f"your PGD leaves {100 * yours_acc:.0f}% of the bench images correct where ART's "
                     f"ProjectedGradientDescent leaves {100 * art_acc:.0f}%: step alpha * grad.sign() from a random "
                     f"start, {PROJECT_FIX}.")
            results.append((eps, alpha, steps, yours_acc, art_acc, yours_loss, art_loss))
    shown = "; ".join(f"eps {e:g}, alpha {a:g}, {s} steps: accuracy {100 * ya:.0f}% (ART {100 * aa:.0f}%), "
                      f"loss {yl:.2f} (ART {al:.2f})" for e, a, s, ya, aa, yl, al in results)
    message = ("random start uniform in the eps-ball, signed ascent steps, projection around x and clipping to "
               f"[0, 1], step for step; as strong as ART's ProjectedGradientDescent ({shown}).")
    return Feedback(exercise, True, message, {"results": results}).show()


# ---------------------------------------------------------------------------------------------
# Exercise: one adversarial training step on a clean + adversarial mixture
# ---------------------------------------------------------------------------------------------

def _fixed_attack(eps: float = 0.1):
    """A deterministic attack for the step check (FGSM on the true labels), so the reference
    update can be computed exactly. It leaves the model in the mode it found it in."""

    def attack(model, x, y):
        was = model.training
        model.eval()
        g = input_grad(model, x, y)
        model.train(was)
        return (x + eps * g.sign()).clamp(0, 1).detach()

    attack.calls = 0
    return attack


def _reference_step(model, x, y, x_adv, lr, weights=(0.5, 0.5), stale_grads=None):
    """The parameters after one SGD step on w_clean * CE(clean) + w_adv * CE(adv)."""
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    state = dict(zip(names, params))
    total = 0.0
    for w, batch in zip(weights, (x, x_adv)):
        if w:
            total = total + w * F.cross_entropy(torch.func.functional_call(model, state, (batch,)), y)
    grads = torch.autograd.grad(total, params, allow_unused=True)
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        g = torch.zeros_like(p) if g is None else g
        if stale_grads is not None:
            g = g + stale_grads[i]
        out.append((p - lr * g).detach())
    return out


def _same(params_a, params_b, tol: float = 1e-5) -> bool:
    return all(torch.allclose(a, b, atol=tol, rtol=1e-4) for a, b in zip(params_a, params_b))


def adversarial_step(fn: Callable, lr: float = 0.05) -> Feedback:
    """Check a learner's `fn(model, optimizer, x, y, attack) -> float`: one update of adversarial
    training on a mixture, loss = (CE(model(x), y) + CE(model(attack(model, x, y)), y)) / 2."""
    exercise = "adversarial_step"
    expected = "adversarial_step(model, optimizer, x, y, attack)"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, x, y = bench()
        model.train()
        attack_fn = _fixed_attack()
        calls = {"n": 0}

        def attack(m, xb, yb):
            calls["n"] += 1
            return attack_fn(m, xb, yb)

        x_adv = attack_fn(model, x, y)
        before = snapshot(model)
        stale = [torch.full_like(p, 0.5) for p in model.parameters()]  # gradients left over from an earlier batch
        for p, g in zip(model.parameters(), stale):
            p.grad = g.clone()
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        x_before = x.clone()
        out = call(exercise, fn, (model, optimizer, x, y, attack), expected, grad_hint=True)
        after = snapshot(model)
        if not torch.equal(x, x_before):
            fail(exercise, "your step modified the clean batch x in place: the attack must work on a copy, "
                 "so that the clean half of the mixture stays clean.")
        if calls["n"] == 0:
            fail(exercise, "you never called attack(model, x, y): the step must train on adversarial images "
                 "as well as clean ones.")
        if _same(before, after, tol=0):
            fail(exercise, "the weights did not change: after loss.backward(), call optimizer.step().")
        if not model.training:
            fail(exercise, "the model is left in eval mode: call model.train() after generating the adversarial "
                 "images and before the forward pass of the update (BatchNorm must use batch statistics "
                 "while training).")
        if isinstance(out, torch.Tensor):
            if out.requires_grad:
                fail(exercise, "return loss.item() (a float), not the loss tensor: a tensor keeps the whole graph "
                     "alive until the next step.")
            out = out.item() if out.numel() == 1 else out
        if not isinstance(out, (float, int)):
            fail(exercise, f"return the loss as a float (loss.item()); got a {type(out).__name__}.")
        mix = _reference_step(model_copy(before, model), x, y, x_adv, lr)
        if _same(after, mix):
            pass
        elif _same(after, _reference_step(model_copy(before, model), x, y, x_adv, lr, stale_grads=stale)):
            fail(exercise, "the gradients of the previous batch were added to this one: call optimizer.zero_grad() "
                 "before loss.backward().")
        elif _same(after, _reference_step(model_copy(before, model), x, y, x_adv, lr, weights=(0.0, 1.0))) or \
                _same(after, _reference_step(model_copy(before, model), x, y, x_adv, lr, weights=(0.0, 1.0),
                                             stale_grads=stale)):
            fail(exercise, "you trained on the adversarial images only: this step trains on a mixture, "
                 "loss = (cross_entropy(model(x), y) + cross_entropy(model(x_adv), y)) / 2, which keeps clean "
                 "accuracy from collapsing.")
        elif _same(after, _reference_step(model_copy(before, model), x, y, x_adv, lr, weights=(1.0, 0.0))) or \
                _same(after, _reference_step(model_copy(before, model), x, y, x_adv, lr, weights=(1.0, 0.0),
                                             stale_grads=stale)):
            fail(exercise, "you trained on the clean images only (x_adv is computed but not in the loss): "
                 "loss = (cross_entropy(model(x), y) + cross_entropy(model(x_adv), y)) / 2.")
        elif _same(after, _reference_step(model_copy(before, model), x, y, x_adv, lr, weights=(1.0, 1.0))):
            fail(exercise, "you added the two losses without averaging them, which doubles the learning rate: "
                 "loss = (loss_clean + loss_adv) / 2.")
        else:
            fail(exercise, "the weights after your step differ from one SGD step on "
                 "(cross_entropy(model(x), y) + cross_entropy(model(x_adv), y)) / 2 with x_adv = attack(model, x, y): "
                 "zero the gradients, build that loss, backward, optimizer.step(), return loss.item().")
        expected_loss = _mixture_loss(model_copy(before, model), x, y, x_adv)
        if abs(float(out) - expected_loss) > 1e-3 * max(1.0, expected_loss):
            fail(exercise, f"the returned loss is {float(out):.4f}, but the mixture loss before the update is "
                 f"{expected_loss:.4f}: return loss.item() of (loss_clean + loss_adv) / 2.")
    message = (f"one SGD step on the clean + adversarial mixture (gradients zeroed first, model left in train mode); "
               f"loss {float(out):.3f}.")
    return Feedback(exercise, True, message, {"loss": float(out)}).show()


def model_copy(params, like):
    """A copy of `like` holding the parameters `params` (a snapshot taken before the update)."""
    import copy

    clone = copy.deepcopy(like)
    with torch.no_grad():
        for p, v in zip(clone.parameters(), params):
            p.copy_(v)
            p.grad = None
    return clone


def _mixture_loss(model, x, y, x_adv) -> float:
    with torch.no_grad():
        return ((F.cross_entropy(model(x), y) + F.cross_entropy(model(x_adv), y)) / 2).item()
