"""Reference evasion attacks that a lab uses but does not teach.

FGSM and PGD come from cleverhans 4 (`cleverhans.torch.attacks`), so a learner's own attack can
be cross-checked against a library that many papers used. FGSM with a random start (Wong, Rice
and Kolter 2020, "Fast is better than free") is short enough to write here; it is the reference
for the adversarial-training exercise. The attacks that judge a defence come from the Adversarial
Robustness Toolbox (ART): APGD with the cross-entropy and the DLR loss (Croce and Hein 2020, the
white-box half of AutoAttack) and the black-box Square attack (Andriushchenko et al. 2020).
`ladder` runs a list of attacks on the same images and reports each one's accuracy and the
per-image worst case, so a robustness headline is the strongest attack's, not the weakest's.

Every function takes images as a float tensor (N, C, H, W) in [0, 1] and returns adversarial
images in the same range, detached from the graph. L-infinity norm throughout. None of them
changes the model's parameters, its train/eval mode, or the gradients stored on its parameters.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import train as _train

__all__ = ["fgsm_reference", "pgd", "pgd_restarts", "fgsm_random_start", "apgd", "square", "accuracy_under_attack",
           "robust_mask", "ladder", "Ladder", "ladder_rungs", "ATTACKS"]

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


def pgd_restarts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int,
                 restarts: int) -> torch.Tensor:
    """PGD from `restarts` random starts: each restart attacks only the images no earlier start has
    fooled, and an image keeps the first adversarial example found (else the last attempt)."""
    if restarts < 1:
        raise ValueError(f"restarts is the number of random starts, at least 1; got {restarts}.")
    x_adv = x.detach().clone()
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        idx = robust.nonzero().flatten()
        if len(idx) == 0:
            break
        x_adv[idx] = pgd(model, x[idx], y[idx], eps, step, steps, rand_init=True)
        robust[idx] = _correct(model, x_adv[idx], y[idx])
    return x_adv


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x).argmax(1) == y
    model.train(was_training)
    return out


class _numpy_seed:
    """ART draws its random starts and Square's patches from numpy's global generator: seed it for
    the attack and put the caller's state back afterwards."""

    def __init__(self, seed: Optional[int]):
        self.seed = seed

    def __enter__(self):
        self.state = np.random.get_state()
        if self.seed is not None:
            np.random.seed(self.seed)

    def __exit__(self, *exc):
        np.random.set_state(self.state)
        return False


def _art_classifier(model: nn.Module, x: torch.Tensor, nb_classes: int):
    from art.estimators.classification import PyTorchClassifier

    device = next(model.parameters()).device
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                             nb_classes=nb_classes, clip_values=(CLIP_MIN, CLIP_MAX),
                             device_type="gpu" if device.type == "cuda" else "cpu")


def _nb_classes(model: nn.Module, x: torch.Tensor) -> int:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        n = int(model(x[:1]).shape[1])
    model.train(was_training)
    return n


def _art_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, make_attack: Callable, seed: Optional[int]):
    nb_classes = _nb_classes(model, x)
    with _keep_params_clean(model), _numpy_seed(seed):
        attack = make_attack(_art_classifier(model, x, nb_classes))
        x_adv = attack.generate(x=x.detach().cpu().numpy().astype(np.float32), y=y.detach().cpu().numpy())
    return torch.from_numpy(x_adv).to(x.device, x.dtype)


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "ce", steps: int = 100,
         restarts: int = 5, batch_size: int = 500, seed: Optional[int] = 0) -> torch.Tensor:
    """Auto-PGD (Croce and Hein 2020) by ART, L-infinity: a step size that adapts itself, momentum,
    `steps` iterations from `restarts` random starts (restarts attack only images not yet fooled).

    loss: "ce" (cross-entropy) or "dlr" (difference of logits ratio, which does not saturate when
    the softmax does: it finds what cross-entropy misses on models that mask gradients).
    seed: numpy seed for the random starts (None: numpy's current state)."""
    from art.attacks.evasion import AutoProjectedGradientDescent

    loss_type = {"ce": "cross_entropy", "dlr": "difference_logits_ratio"}.get(loss)
    if loss_type is None:
        raise ValueError(f"loss must be 'ce' or 'dlr'; got {loss!r}.")
    make = lambda clf: AutoProjectedGradientDescent(  # noqa: E731
        estimator=clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps, targeted=False,
        nb_random_init=restarts, batch_size=batch_size, loss_type=loss_type, verbose=False)
    return _project(_art_run(model, x, y, make, seed), x, eps)


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int = 300, p_init: float = 0.8,
           batch_size: int = 500, seed: Optional[int] = 0) -> torch.Tensor:
    """Square attack (Andriushchenko et al. 2020) by ART, L-infinity: black-box, it only reads the
    model's outputs, `queries` random square-shaped updates per image."""
    from art.attacks.evasion import SquareAttack

    make = lambda clf: SquareAttack(estimator=clf, norm=np.inf, eps=eps, max_iter=queries, p_init=p_init,  # noqa: E731
                                    nb_restarts=1, batch_size=batch_size, verbose=False)
    return _project(_art_run(model, x, y, make, seed), x, eps)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    # ART works in float32 numpy; project once more so the L-infinity budget and [0, 1] hold exactly.
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(CLIP_MIN, CLIP_MAX).detach()


ATTACKS: dict[str, Callable] = {
    "fgsm": lambda model, x, y, eps, **kw: fgsm_reference(model, x, eps, y=y),
    "pgd": lambda model, x, y, eps, step=0.01, steps=40, rand_init=True, **kw: pgd(model, x, y, eps, step, steps, rand_init),
    "fgsm_random_start": lambda model, x, y, eps, alpha=None, **kw: fgsm_random_start(model, x, y, eps, alpha if alpha is not None else 1.25 * eps),
    "pgd_restarts": lambda model, x, y, eps, step=0.01, steps=40, restarts=5, **kw: pgd_restarts(model, x, y, eps, step, steps, restarts),
    "apgd_ce": lambda model, x, y, eps, **kw: apgd(model, x, y, eps, loss="ce", **kw),
    "apgd_dlr": lambda model, x, y, eps, **kw: apgd(model, x, y, eps, loss="dlr", **kw),
    "square": lambda model, x, y, eps, **kw: square(model, x, y, eps, **kw),
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
        "fgsm_random_start" (alpha=1.25 * eps), "pgd_restarts" (restarts=5), "apgd_ce" and
        "apgd_dlr" (steps=100, restarts=5, seed=0), "square" (queries=300, seed=0), or any
        `fn(model, x, y, eps, **attack_kwargs)`.
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


def robust_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable, batch_size: int = 500) -> torch.Tensor:
    """For each image, True when `model` still classifies `attack(model, x, y)` correctly (bool, on CPU)."""
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i: i + batch_size], y[i: i + batch_size]
        out.append(_correct(model, attack(model, xb, yb).detach(), yb).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


@dataclass
class Ladder:
    """Accuracy under each attack of a ladder, on the same images. `robust[name]` is the per-image
    result; `worst` is the per-image AND over the attacks named in `worst_of` (an image counts as
    robust only if every one of them failed on it)."""

    accuracy: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    robust: dict = field(default_factory=dict)
    worst_of: tuple = ()
    worst_name: str = "worst case"

    @property
    def worst(self) -> float:
        return self.accuracy[self.worst_name]

    def rows(self):
        """(attack, images, accuracy, seconds) per rung, in order."""
        return [(name, self.images[name], acc, self.seconds.get(name, 0.0)) for name, acc in self.accuracy.items()]

    def table(self) -> str:
        from .tables import format_table

        return format_table(("attack", "images", "accuracy", "seconds"),
                            [(name, n, f"{acc:.1%}", f"{sec:.0f}") for name, n, acc, sec in self.rows()])


def ladder(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rungs: dict, worst_of=(), sizes: Optional[dict] = None,
           worst_name: str = "worst case", batch_size: int = 500, progress: bool = True) -> Ladder:
    """Run each attack in `rungs` ({name: attack(model, x, y) -> x_adv}, weakest first) on the
    first `sizes.get(name, len(x))` images and return a `Ladder`. The worst case over the rungs in
    `worst_of` (which must share the same images) is added as the last rung, `worst_name`."""
    return run_ladder(robust_mask, model, x, y, rungs, worst_of, sizes, worst_name, batch_size, progress,
                      all_of=lambda masks: torch.stack(masks).all(0))


def run_ladder(robust_mask_fn: Callable, model, x, y, rungs: dict, worst_of=(), sizes: Optional[dict] = None,
               worst_name: str = "worst case", batch_size: int = 500, progress: bool = True,
               all_of: Callable = lambda masks: np.all(masks, axis=0)) -> Ladder:
    """The ladder loop shared by the PyTorch and the TensorFlow labs: `robust_mask_fn(model, x, y,
    attack, batch_size)` gives the per-image result in the framework's own type, `all_of` ANDs a
    list of them."""
    sizes = sizes or {}
    result = Ladder(worst_of=tuple(worst_of), worst_name=worst_name)
    bar = _train._progress(list(rungs.items()), "attack ladder", progress)
    for name, attack in bar:
        bar.set_postfix_str(name, refresh=True)
        n = min(int(sizes.get(name, len(x))), len(x))
        start = time.perf_counter()
        mask = robust_mask_fn(model, x[:n], y[:n], attack, batch_size=batch_size)
        result.seconds[name] = time.perf_counter() - start
        result.robust[name], result.images[name] = mask, n
        result.accuracy[name] = _share(mask) if n else float("nan")
    if worst_of:
        missing = [name for name in worst_of if name not in result.robust]
        if missing:
            raise KeyError(f"worst_of names attacks that are not rungs: {missing}; rungs are {list(rungs)}.")
        n = {result.images[name] for name in worst_of}
        if len(n) != 1:
            raise ValueError(f"the attacks in worst_of must run on the same images; sizes {n}.")
        mask = all_of([result.robust[name] for name in worst_of])
        result.robust[worst_name], result.images[worst_name] = mask, n.pop()
        result.accuracy[worst_name] = _share(mask)
        result.seconds[worst_name] = sum(result.seconds[name] for name in worst_of)
    return result


def _share(mask) -> float:
    """Share of True in a boolean torch tensor or numpy array."""
    return float(np.asarray(mask, dtype=np.float64).mean())


def ladder_rungs(eps: float, fgsm: Optional[Callable] = None, pgd_step: float = 0.01, pgd_steps: int = 40,
                 restarts: int = 5, apgd_steps: int = 100, apgd_restarts: int = 3, square_queries: int = 0,
                 seed: int = 0) -> dict:
    """The evaluation ladder, weakest first: FGSM (`fgsm(model, x, y, eps)`, default cleverhans),
    PGD, PGD from `restarts` random starts, APGD-CE, APGD-DLR, and Square when `square_queries` > 0. Names are
    what `ladder` reports; "APGD-CE" and "APGD-DLR" are the ones to take the worst case over."""
    fgsm = fgsm or (lambda m, x, y, e: fgsm_reference(m, x, e, y=y))
    rungs = {
        "FGSM": lambda m, x, y: fgsm(m, x, y, eps),
        f"PGD-{pgd_steps}": lambda m, x, y: pgd(m, x, y, eps, pgd_step, pgd_steps),
        f"PGD-{pgd_steps}, {restarts} restarts": lambda m, x, y: pgd_restarts(m, x, y, eps, pgd_step, pgd_steps,
                                                                              restarts),
        "APGD-CE": lambda m, x, y: apgd(m, x, y, eps, "ce", steps=apgd_steps, restarts=apgd_restarts, seed=seed),
        "APGD-DLR": lambda m, x, y: apgd(m, x, y, eps, "dlr", steps=apgd_steps, restarts=apgd_restarts, seed=seed),
    }
    if square_queries:
        rungs[f"Square, {square_queries} queries"] = lambda m, x, y: square(m, x, y, eps, queries=square_queries,
                                                                           seed=seed)
    return rungs
