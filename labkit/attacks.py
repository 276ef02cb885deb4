"""Reference evasion attacks that a lab uses but does not teach.

FGSM and PGD come from cleverhans 4 (`cleverhans.torch.attacks`), so a learner's own attack can
be cross-checked against a library that many papers used. FGSM with a random start (Wong, Rice
and Kolter 2020, "Fast is better than free") is short enough to write here; it is the reference
for the adversarial-training exercise.

Every function takes images as a float tensor (N, C, H, W) in [0, 1] and returns adversarial
images in the same range, detached from the graph. L-infinity norm throughout. None of them
changes the model's parameters, its train/eval mode, or the gradients stored on its parameters.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import train as _train

__all__ = ["fgsm_reference", "pgd", "fgsm_random_start", "accuracy_under_attack", "ATTACKS"]

CLIP_MIN, CLIP_MAX = 0.0, 1.0


def _cleverhans():
    # Import here: only the torch attacks, never cleverhans' dataset helpers (they download).
    from cleverhans.torch.attacks.fast_gradient_method import fast_gradient_method
    from cleverhans.torch.attacks.projected_gradient_descent import projected_gradient_descent

    return fast_gradient_method, projected_gradient_descent


class _keep_params_clean:
    """Restore the parameters' .grad after a library attack (cleverhans calls loss.backward())."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.saved = [(p, None if p.grad is None else p.grad.clone()) for p in self.model.parameters()]
        self.training = self.model.training
        return self

    def __exit__(self, *exc):
        for p, g in self.saved:
            p.grad = g
        self.model.train(self.training)
        return False


def fgsm_reference(model: nn.Module, x: torch.Tensor, eps: float, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Untargeted FGSM (Goodfellow et al. 2015) by cleverhans: x + eps * sign(grad of the loss), clipped to [0, 1].

    y: true labels; when None, cleverhans uses the model's own predictions (avoids label leaking).
    """
    fast_gradient_method, _ = _cleverhans()
    with _keep_params_clean(model):
        x_adv = fast_gradient_method(model, x.detach(), eps, np.inf, clip_min=CLIP_MIN, clip_max=CLIP_MAX, y=y)
    return x_adv.detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: Optional[torch.Tensor],
    eps: float,
    step: float,
    steps: int,
    rand_init: bool = True,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) by cleverhans, L-infinity ball of radius `eps`.

    `steps` signed-gradient steps of size `step`, each followed by projection onto the eps ball
    and [0, 1]; with `rand_init`, it starts from a uniformly random point in the ball (the torch
    global generator draws it, so seed torch for a repeatable result).
    """
    _, projected_gradient_descent = _cleverhans()
    with _keep_params_clean(model):
        x_adv = projected_gradient_descent(
            model, x.detach(), eps, step, steps, np.inf,
            clip_min=CLIP_MIN, clip_max=CLIP_MAX, y=y, rand_init=rand_init, rand_minmax=eps,
            sanity_checks=False,
        )
    return x_adv.detach()


def fgsm_random_start(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """FGSM from a random start (Wong, Rice and Kolter 2020), as used for fast adversarial training.

    delta ~ Uniform(-eps, eps) (kept so that x + delta stays in [0, 1]); one signed-gradient step
    of size `alpha` on the loss at x + delta; delta projected back onto [-eps, eps]; result clipped
    to [0, 1]. The paper uses alpha = 1.25 * eps. `generator` (on x's device) makes the start
    repeatable without touching the global seed.
    """
    x = x.detach()
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    delta = (noise * 2 - 1) * eps
    delta = (x + delta).clamp(CLIP_MIN, CLIP_MAX) - x
    delta.requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(CLIP_MIN, CLIP_MAX).detach()


ATTACKS: dict[str, Callable] = {
    "fgsm": lambda model, x, y, eps, **kw: fgsm_reference(model, x, eps, y=y),
    "pgd": lambda model, x, y, eps, step=0.01, steps=40, rand_init=True, **kw: pgd(model, x, y, eps, step, steps, rand_init),
    "fgsm_random_start": lambda model, x, y, eps, alpha=None, **kw: fgsm_random_start(model, x, y, eps, alpha if alpha is not None else 1.25 * eps),
}


def accuracy_under_attack(
    model: nn.Module,
    x,
    y,
    attack: Union[str, Callable] = "fgsm",
    eps: float = 0.3,
    device=None,
    batch_size: int = 500,
    progress: bool = True,
    desc: Optional[str] = None,
    **attack_kwargs,
) -> float:
    """Accuracy (fraction) of `model` on adversarial versions of (x, y), attacked batch by batch.

    attack: "fgsm", "pgd" (keyword arguments step=0.01, steps=40, rand_init=True),
        "fgsm_random_start" (alpha=1.25 * eps), or any `fn(model, x, y, eps, **attack_kwargs)`.
    x, y: numpy arrays (uint8 images are scaled to [0, 1]) or tensors (N, C, H, W) in [0, 1].
    eps = 0 measures clean accuracy.
    """
    if isinstance(attack, str):
        try:
            fn = ATTACKS[attack]
        except KeyError:
            raise KeyError(f"Unknown attack {attack!r}; use one of {', '.join(ATTACKS)} or pass a function.") from None
        name = attack
    else:
        fn, name = attack, getattr(attack, "__name__", "attack")
    if eps == 0:
        return _train.evaluate(model, x, y, device, batch_size=batch_size, progress=progress, desc=desc or "clean")
    return _train.evaluate(
        model, x, y, device,
        attack=lambda m, xb, yb: fn(m, xb, yb, eps, **attack_kwargs),
        batch_size=batch_size, progress=progress, desc=desc or f"{name} eps={eps:g}",
    )
