"""Differentially private training with Opacus: the plumbing around `PrivacyEngine`.

    run = privacy.train_private(models.TanhCNN(), x, y, epochs=2, batch_size=512, lr=0.5,
                                max_grad_norm=1.0, target_epsilon=3.0, delta=1e-5)
    run.model, run.epsilon, run.noise_multiplier, run.seconds_per_epoch

`train_private` builds the loader, wraps model, optimizer and loader with Opacus'
`make_private_with_epsilon` (Poisson sampling, flat clipping, noise calibrated by the accountant
to reach the target epsilon after the planned epochs), trains, and reads the spent epsilon back
from the accountant. Without a target epsilon it trains the same model with the same optimizer
and batch size, non-privately, so that the two are comparable. `epsilon_sweep` repeats that over
a list of targets. `opacus_dp_gradient` and `opacus_per_sample_gradients` give Opacus' answer for
one DP-SGD step on a fixed batch, which `labkit.check.dp_sgd_step` compares a hand-written step with.

Every call of `train_private` is written into a ledger (`LEDGER`, or the one passed in) with the
fingerprints of the examples it trained on and the steps the accountant recorded, so that the
privacy spent on a set of records counts *every* run that touched them (tuning, sweeps and attack
experiments included):

    privacy.LEDGER.spent_on(x_private, delta=1e-5)          # Spend(epsilon, uses, ...)
    privacy.compose_epsilon(history, 1e-5, "dp_accounting-pld")   # a second library's figure
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import train

__all__ = ["PrivateRun", "train_private", "epsilon_sweep", "unwrap", "opacus_per_sample_gradients",
           "opacus_dp_gradient", "plot_sweep", "check_delta", "delta_advice", "split_cohorts", "compose_epsilon",
           "ACCOUNTANTS", "Ledger", "Spend", "LEDGER"]


@dataclass
class PrivateRun:
    """One training run: the trained (unwrapped) model and what it cost in privacy and time."""

    model: nn.Module
    private: bool
    epsilon: float  # spent, read from the accountant; inf without DP
    delta: float
    noise_multiplier: float  # 0 without DP
    max_grad_norm: Optional[float]
    sample_rate: float
    steps: int
    epochs: int
    batch_size: int
    accountant: str
    seconds_per_epoch: list = field(default_factory=list)
    history: list = field(default_factory=list)
    accounting: list = field(default_factory=list)  # the accountant's [(sigma, q, steps)] of the steps taken

    @property
    def epoch_seconds(self) -> float:
        """Median seconds per epoch (robust to a slow first epoch)."""
        return float(np.median(self.seconds_per_epoch)) if self.seconds_per_epoch else float("nan")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside an Opacus GradSampleModule (or the model itself)."""
    return getattr(model, "_module", model)


def check_delta(delta: float, n: int) -> float:
    """Refuse a delta that is not a probability below 1/n: a mechanism that publishes each record with
    probability delta satisfies (0, delta)-DP and still leaks about n * delta records. Whether delta is
    also *well* below 1/n (n * delta <= 0.1, the labs' rule) is what `delta_advice` says."""
    if not 0 < delta < 1:
        raise ValueError(f"delta = {delta!r} is not a probability in (0, 1); the usual choice is 1e-5 or below 1/n.")
    if delta >= 1 / n:
        raise ValueError(
            f"delta = {delta:g} is not below 1/n = {1 / n:.3g} for n = {n} training examples: such a guarantee allows "
            f"leaking about n * delta = {n * delta:.2g} whole records. Choose delta well below 1/n (e.g. {0.1 / n:.1g})."
        )
    return delta


def delta_advice(delta: float, n: int) -> str:
    """One verdict on delta for n records, by the rule the labs use: delta must be below 1/n (else
    `check_delta` refuses it) and *well* below, meaning n * delta <= 0.1 (delta <= 1 / (10 n))."""
    if not 0 < delta < 1 or delta >= 1 / n:
        return f"TOO LARGE: n * delta = {n * delta:.2g} >= 1 (choose delta <= {0.1 / n:.2g})"
    if n * delta > 0.1:
        return f"below 1/n but not well below: n * delta = {n * delta:.2g} > 0.1 (choose delta <= {0.1 / n:.2g})"
    return f"OK: n * delta = {n * delta:.2g} <= 0.1"


def split_cohorts(y, dev_fraction: float = 0.5, seed: int = 0, x=None):
    """Index arrays (private, development) of a stratified split of the records.

    The development cohort is held apart for every decision and experiment (tuning, sweeps,
    attacks) and its privacy is not claimed (in practice: a public dataset or consenting
    patients); the private cohort is touched only by the final DP training run. With `x`, identical
    images (the same X-ray stored twice) land in the same cohort, so no private record is also a
    development record."""
    from sklearn.model_selection import train_test_split

    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must lie strictly between 0 and 1 (got {dev_fraction!r}).")
    y = np.asarray(y)
    if x is None:
        groups = np.arange(len(y))
    else:
        keys = _row_hashes(x)
        first = {}
        groups = np.array([first.setdefault(k, i) for i, k in enumerate(keys)])
    heads = np.unique(groups)  # one representative per distinct image
    _, dev_heads = train_test_split(heads, test_size=dev_fraction, random_state=seed, stratify=y[heads])
    is_dev = np.isin(groups, dev_heads)
    return np.flatnonzero(~is_dev), np.flatnonzero(is_dev)


# ---------------------------------------------------------------------------------------------
# Accounting: composing runs, and a ledger of every run on every record
# ---------------------------------------------------------------------------------------------

ACCOUNTANTS = ("opacus-rdp", "opacus-prv", "dp_accounting-rdp", "dp_accounting-pld")


def compose_epsilon(history, delta: float, accountant: str = "opacus-rdp") -> float:
    """Epsilon of the composition of Poisson-sampled Gaussian steps [(sigma, q, steps), ...] at delta.

    "opacus-rdp" and "opacus-prv" use Opacus' accountants, "dp_accounting-rdp" and "dp_accounting-pld"
    Google's dp_accounting (a second, independent implementation). A step with sigma = 0 (no noise,
    a non-private run) makes epsilon infinite; an empty history spends nothing."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant {accountant!r} is unknown: use one of {', '.join(ACCOUNTANTS)}.")
    history = [(float(s), float(q), int(k)) for s, q, k in history]
    if not history:
        return 0.0
    if any(s <= 0 for s, _, _ in history):
        return math.inf
    if accountant.startswith("opacus"):
        from opacus.accountants import PRVAccountant, RDPAccountant

        acc = RDPAccountant() if accountant == "opacus-rdp" else PRVAccountant()
        acc.history = list(history)
        quiet = _quiet_opacus()
        try:
            return float(acc.get_epsilon(delta))
        finally:
            quiet.__exit__(None, None, None)
    import dp_accounting

    event = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), k)
        for s, q, k in history])
    acc = (dp_accounting.rdp.RdpAccountant() if accountant == "dp_accounting-rdp"
           else dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3))
    return float(acc.compose(event).get_epsilon(delta))


def _row_hashes(x) -> list:
    """One short hash per example, of its image as the training loop sees it (uint8 and [0, 1]
    floats of the same image agree)."""
    xt, _ = train.to_tensors(x, np.zeros(len(x), dtype=np.int64))
    rows = xt.reshape(len(xt), -1).numpy().astype(np.float32)
    return [hashlib.blake2b(r.tobytes(), digest_size=12).digest() for r in rows]


def _fingerprints(x) -> frozenset:
    return frozenset(_row_hashes(x))


@dataclass(frozen=True)
class Use:
    """One training run as the ledger keeps it."""

    label: str
    examples: frozenset = field(repr=False)
    private: bool
    accounting: tuple  # ((sigma, q, steps), ...); empty for a non-private run


@dataclass(frozen=True)
class Spend:
    """What a set of records has spent: the composed epsilon of every run that trained on any of them."""

    epsilon: float
    delta: float
    accountant: str
    uses: tuple  # labels of the runs that touched the records, in order

    @property
    def runs(self) -> int:
        return len(self.uses)


class Ledger:
    """Every training run and the records it used. `spent_on(x)` composes all runs that trained on
    any record of x: a conservative per-record bound (each record is covered by at most those runs)."""

    def __init__(self):
        self.uses: list[Use] = []

    def record(self, x, accounting, label: str = "", private: bool = True) -> Use:
        use = Use(label=label or f"run {len(self.uses) + 1}", examples=_fingerprints(x), private=private,
                  accounting=tuple(tuple(h) for h in accounting) if private else ())
        self.uses.append(use)
        return use

    def uses_of(self, x) -> list[Use]:
        wanted = _fingerprints(x)
        return [u for u in self.uses if not u.examples.isdisjoint(wanted)]

    def spent_on(self, x, delta: float, accountant: str = "opacus-rdp") -> Spend:
        uses = self.uses_of(x)
        if any(not u.private for u in uses):
            epsilon = math.inf
        else:
            epsilon = compose_epsilon([h for u in uses for h in u.accounting], delta, accountant)
        return Spend(epsilon=epsilon, delta=delta, accountant=accountant, uses=tuple(u.label for u in uses))

    def clear(self):
        self.uses.clear()


LEDGER = Ledger()  # what `train_private` records into unless given another ledger


def _quiet_opacus():
    """Opacus' warnings that every lab run would repeat: the non-secure RNG (fine for teaching; use
    secure_mode=True in production) and PyTorch's notice about its backward hooks."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
    warnings.filterwarnings("ignore", message=".*full_backward_hook.*")
    warnings.filterwarnings("ignore", message=".*non-full backward hook.*")
    warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")
    return context


def train_private(
    model: nn.Module,
    x,
    y,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    max_grad_norm: float = 1.0,
    target_epsilon: Optional[float] = None,
    noise_multiplier: Optional[float] = None,
    delta: float = 1e-5,
    seed: int = 0,
    accountant: str = "rdp",
    device=None,
    progress: bool = True,
    desc: str = "",
    x_val=None,
    y_val=None,
    ledger: Optional[Ledger] = None,
) -> PrivateRun:
    """Train `model` with SGD (momentum) for `epochs`; with `target_epsilon`, privately with Opacus.

    Private: `PrivacyEngine(accountant=accountant).make_private_with_epsilon` with Poisson sampling
    (each example joins each batch independently with probability batch_size / n), flat per-example
    clipping to `max_grad_norm`, and the noise multiplier the accountant needs to end at
    (target_epsilon, delta) after `epochs`. The spent epsilon is read from the accountant afterwards.
    With `noise_multiplier` instead of a target, the noise is fixed (a run that is one part of a
    longer private computation, e.g. one federated round, accounted for by the caller over all parts).
    Non-private (neither given): the same optimizer and batch size on shuffled batches.
    Every run, private or not, is recorded in `ledger` (default: `LEDGER`) with the examples it used.
    Returns a PrivateRun (the model is unwrapped and left in eval mode).
    """
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1 (got {epochs}, {batch_size}).")
    if target_epsilon is not None and not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"target_epsilon must be a positive number, or None for no DP (got {target_epsilon!r}).")
    if noise_multiplier is not None and target_epsilon is not None:
        raise ValueError("give target_epsilon (the noise is calibrated to it) or noise_multiplier (fixed noise), "
                         "not both.")
    if noise_multiplier is not None and not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"noise_multiplier must be a positive number (got {noise_multiplier!r}).")
    device = device or next(model.parameters()).device
    model.to(device)
    torch.manual_seed(seed)
    loader = train.make_loader(x, y, batch_size=batch_size, shuffle=True, seed=seed)
    n = len(loader.dataset)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    private = target_epsilon is not None or noise_multiplier is not None
    fixed_noise = noise_multiplier
    noise_multiplier = 0.0
    engine = None
    if private:
        check_delta(delta, n)
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ValueError(f"This model cannot be trained with DP-SGD as it is: {errors[0]}. "
                             "Run model = ModuleValidator.fix(model) first (it swaps BatchNorm for GroupNorm).")
        engine = PrivacyEngine(accountant=accountant)
        quiet = _quiet_opacus()
        try:
            if fixed_noise is not None:
                model, optimizer, loader = engine.make_private(
                    module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=fixed_noise,
                    max_grad_norm=max_grad_norm, poisson_sampling=True,
                    noise_generator=torch.Generator(device=device).manual_seed(seed),
                )
            else:
                model, optimizer, loader = engine.make_private_with_epsilon(
                    module=model, optimizer=optimizer, data_loader=loader, target_epsilon=target_epsilon,
                    target_delta=delta, epochs=epochs, max_grad_norm=max_grad_norm, poisson_sampling=True,
                    noise_generator=torch.Generator(device=device).manual_seed(seed),
                )
        finally:
            quiet.__exit__(None, None, None)
        noise_multiplier = float(optimizer.noise_multiplier)
    history, seconds = [], []
    label = desc or (f"DP eps {target_epsilon:g}" if target_epsilon is not None
                     else f"DP noise {fixed_noise:g}" if private else "no DP")
    quiet = _quiet_opacus()
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            stats = train.train_epoch(model, loader, optimizer, device, desc=f"{label}, epoch {epoch}/{epochs}",
                                      progress=progress)
            seconds.append(time.perf_counter() - start)
            stats["seconds"] = seconds[-1]
            if x_val is not None:
                stats["val_accuracy"] = train.evaluate(model, x_val, y_val, device, progress=False)
            history.append(stats)
        epsilon = float(engine.get_epsilon(delta)) if private else math.inf
    finally:
        quiet.__exit__(None, None, None)
    plain = unwrap(model)
    if private:  # Opacus' hooks stay on the module inside the wrapper: take them off for later use
        if hasattr(model, "remove_hooks"):
            model.remove_hooks()
        for p in plain.parameters():
            for name in ("grad_sample", "summed_grad"):
                if hasattr(p, name):
                    setattr(p, name, None)
    plain.eval()
    accounting = [tuple(h) for h in engine.accountant.history] if private else []
    steps = sum(h[2] for h in accounting) if private else epochs * math.ceil(n / batch_size)
    (LEDGER if ledger is None else ledger).record(x, accounting, label=label, private=private)
    return PrivateRun(model=plain, private=private, epsilon=epsilon, delta=delta if private else 0.0,
                      noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm if private else None,
                      sample_rate=batch_size / n, steps=steps, epochs=epochs, batch_size=batch_size,
                      accountant=accountant if private else "-", seconds_per_epoch=seconds, history=history,
                      accounting=accounting)


def epsilon_sweep(
    build: Callable[[], nn.Module],
    x,
    y,
    x_eval,
    y_eval,
    epsilons,
    *,
    keep_models: bool = False,
    progress: bool = True,
    **settings,
) -> list[dict]:
    """Train one fresh `build()` model per target epsilon (None = no DP) with `train_private(**settings)`
    and measure each on (x_eval, y_eval). Returns one row per run: target_epsilon, epsilon (spent),
    noise_multiplier, accuracy, seconds (per epoch), and the run itself under "run" when keep_models."""
    from tqdm.auto import tqdm

    epsilons = list(epsilons)
    if not epsilons:
        raise ValueError("epsilons is empty: pass targets such as [0.5, 1, 3, 8, None] (None = no DP).")
    rows = []
    for target in tqdm(epsilons, desc="epsilon sweep", disable=not progress):
        run = train_private(build(), x, y, target_epsilon=target, progress=False, **settings)
        row = {
            "target_epsilon": math.inf if target is None else float(target),
            "epsilon": run.epsilon,
            "noise_multiplier": run.noise_multiplier,
            "accuracy": train.evaluate(run.model, x_eval, y_eval, progress=False),
            "seconds": run.epoch_seconds,
        }
        if keep_models:
            row["run"] = run
        rows.append(row)
    return rows


def opacus_per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """{parameter name: (N, *shape)} gradients of each example's cross-entropy loss, by Opacus'
    GradSampleModule (a deep copy of the model; the model itself is not touched)."""
    from opacus import GradSampleModule

    twin = copy.deepcopy(model).train()  # Opacus records activations in training mode only
    quiet = _quiet_opacus()
    try:
        wrapped = GradSampleModule(twin, loss_reduction="mean")
        F.cross_entropy(wrapped(x), y).backward()
        grads = {name: p.grad_sample.detach().clone() for name, p in twin.named_parameters() if p.requires_grad}
        wrapped._close()
    finally:
        quiet.__exit__(None, None, None)
    return grads


def opacus_dp_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float,
                       noise_multiplier: float, generator: Optional[torch.Generator] = None) -> dict:
    """{parameter name: gradient} that Opacus' DPOptimizer would hand to SGD for this batch: per-example
    gradients clipped to max_grad_norm (flat, over all parameters), summed, Gaussian noise of standard
    deviation noise_multiplier * max_grad_norm added, divided by the batch size."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    twin = copy.deepcopy(model).train()  # Opacus records activations in training mode only
    quiet = _quiet_opacus()
    try:
        wrapped = GradSampleModule(twin, loss_reduction="mean")
        optimizer = DPOptimizer(torch.optim.SGD(twin.parameters(), lr=0.0), noise_multiplier=noise_multiplier,
                                max_grad_norm=max_grad_norm, expected_batch_size=len(x), loss_reduction="mean",
                                generator=generator)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y).backward()
        optimizer.clip_and_accumulate()
        optimizer.add_noise()
        optimizer.scale_grad()
        grads = {name: p.grad.detach().clone() for name, p in twin.named_parameters() if p.requires_grad}
        wrapped._close()
    finally:
        quiet.__exit__(None, None, None)
    return grads


def plot_sweep(rows: list[dict], published: Optional[dict] = None, title: str = "Privacy against accuracy"):
    """Accuracy against spent epsilon (log scale) for the DP rows of `epsilon_sweep`, the no-DP row as a
    dashed line; `published` = {label: (epsilon, accuracy)} adds reference points."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dp = [r for r in rows if math.isfinite(r["target_epsilon"])]
    ax.plot([r["epsilon"] for r in dp], [r["accuracy"] for r in dp], "o-", label="DP-SGD (spent epsilon)")
    for r in dp:
        ax.annotate(f"{r['accuracy']:.1%}", (r["epsilon"], r["accuracy"]), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8)
    for r in rows:
        if not math.isfinite(r["target_epsilon"]):
            ax.axhline(r["accuracy"], ls="--", color="grey", label=f"no DP ({r['accuracy']:.1%})")
    for i, (label, (eps, acc)) in enumerate((published or {}).items()):
        ax.plot([eps], [acc], "s", color=f"C{i + 1}", label=label)
    ax.set_xscale("log")
    ax.set(xlabel="epsilon (log scale; smaller = more private)", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return fig
