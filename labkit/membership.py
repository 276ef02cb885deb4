"""Membership inference: does a model give away who was in its training set?

The loss-threshold attack (Yeom et al. 2018): a model usually has a lower loss on the examples it
trained on than on examples it never saw, so "loss below a threshold" guesses "member". Sweeping
the threshold gives a ROC curve; the attack's AUC is 0.5 for a model that leaks nothing measurable
this way, and the true-positive rate at a 1% false-positive rate (Carlini et al. 2022) says how
many members the attacker can name with confidence.

    result = membership.loss_threshold_attack(model, x_members, y_members, x_out, y_out, seed=0)
    result.auc, result.tpr_at_1_fpr, result.advantage

Members and non-members are balanced (the larger set is subsampled, seeded), so an AUC of 0.5
means chance and the base rate does not flatter the attack.

A model that generalises well is confident on easy non-members too, and a plain loss threshold
then sees little. Difficulty calibration (Watson et al. 2022) compares each example's loss with its
loss under a *reference* model trained the same way on other data: `reference=` scores by
loss(reference) - loss(model), so "easy for everyone" no longer looks like "member".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import train

__all__ = ["AttackResult", "example_losses", "balanced", "loss_threshold_attack", "tpr_at_fpr", "plot_roc",
           "plot_loss_histograms"]


@dataclass
class AttackResult:
    """The outcome of a membership-inference attack on one model."""

    auc: float
    tpr_at_1_fpr: float
    advantage: float  # max over thresholds of TPR - FPR (the membership advantage of Yeom et al.)
    n_members: int
    n_nonmembers: int
    fpr: np.ndarray = field(repr=False, default=None)
    tpr: np.ndarray = field(repr=False, default=None)
    member_losses: np.ndarray = field(repr=False, default=None)
    nonmember_losses: np.ndarray = field(repr=False, default=None)

    def as_row(self, name: str) -> dict:
        return {"model": name, "attack AUC": self.auc, "TPR at 1% FPR": self.tpr_at_1_fpr,
                "advantage": self.advantage, "members": self.n_members, "non-members": self.n_nonmembers}


def example_losses(model: nn.Module, x, y, device=None, batch_size: int = 1000) -> np.ndarray:
    """The cross-entropy loss of each example (numpy float64), in eval mode, without gradients."""
    device = device or next(model.parameters()).device
    xt, yt = train.to_tensors(x, y) if not isinstance(x, torch.Tensor) else (x, torch.as_tensor(y))
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(xt), batch_size):
            logits = model(xt[i : i + batch_size].to(device))
            out.append(F.cross_entropy(logits, yt[i : i + batch_size].to(device), reduction="none").double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


def balanced(n_members: int, n_nonmembers: int, seed: int = 0, size: int | None = None):
    """Index arrays (members, non-members) of equal length min(n_members, n_nonmembers) (or `size`),
    drawn without replacement with a seeded generator."""
    k = min(n_members, n_nonmembers) if size is None else int(size)
    if k < 1 or k > min(n_members, n_nonmembers):
        raise ValueError(f"Cannot draw {k} members and {k} non-members from {n_members} and {n_nonmembers}: "
                         "pass a size between 1 and the smaller of the two.")
    rng = np.random.default_rng(seed)
    return (np.sort(rng.choice(n_members, k, replace=False)), np.sort(rng.choice(n_nonmembers, k, replace=False)))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float = 0.01) -> float:
    """The highest true-positive rate the ROC curve reaches at a false-positive rate of at most max_fpr."""
    ok = np.asarray(fpr) <= max_fpr + 1e-12
    return float(np.max(np.asarray(tpr)[ok])) if ok.any() else 0.0


def loss_threshold_attack(model: nn.Module, x_members, y_members, x_nonmembers, y_nonmembers, seed: int = 0,
                          size: int | None = None, device=None, reference: nn.Module | None = None) -> AttackResult:
    """Score every example by minus its loss (a lower loss looks more like a member), on balanced
    member and non-member sets, and summarise the ROC curve (scikit-learn's roc_curve and roc_auc_score).
    With `reference` (a model trained the same way on none of these examples) the score is
    loss(reference) - loss(model): difficulty calibration. The result keeps the model's own losses."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if len(x_members) != len(y_members) or len(x_nonmembers) != len(y_nonmembers):
        raise ValueError("Each image set needs one label per image: check x_members / y_members and "
                         "x_nonmembers / y_nonmembers.")
    mi, ni = balanced(len(x_members), len(x_nonmembers), seed=seed, size=size)
    member = example_losses(model, x_members[mi], y_members[mi], device)
    nonmember = example_losses(model, x_nonmembers[ni], y_nonmembers[ni], device)
    labels = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
    scores = -np.r_[member, nonmember]
    if reference is not None:
        scores = scores + np.r_[example_losses(reference, x_members[mi], y_members[mi], device),
                                example_losses(reference, x_nonmembers[ni], y_nonmembers[ni], device)]
    fpr, tpr, _ = roc_curve(labels, scores)
    return AttackResult(auc=float(roc_auc_score(labels, scores)), tpr_at_1_fpr=tpr_at_fpr(fpr, tpr, 0.01),
                        advantage=float(np.max(tpr - fpr)), n_members=len(member), n_nonmembers=len(nonmember),
                        fpr=fpr, tpr=tpr, member_losses=member, nonmember_losses=nonmember)


def plot_roc(results: dict, title: str = "Loss-threshold membership inference"):
    """ROC curves {label: AttackResult} on log-log axes (the low-FPR corner is where attacks matter),
    with the chance diagonal."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, log in zip(axes, (False, True)):
        for label, r in results.items():
            ax.plot(r.fpr, r.tpr, label=f"{label} (AUC {r.auc:.3f})")
        grid = np.logspace(-3, 0, 50) if log else np.linspace(0, 1, 50)
        ax.plot(grid, grid, ":", color="grey", label="chance")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set(xlim=(1e-3, 1), ylim=(1e-3, 1.05))
            ax.axvline(0.01, color="red", lw=0.8, ls="--")
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate",
               title=("log scale (red: 1% FPR)" if log else "linear scale"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_loss_histograms(results: dict, bins: int = 40):
    """Per model, the loss distribution of members and non-members (the gap is what the attack uses)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.4), squeeze=False)
    for ax, (label, r) in zip(axes[0], results.items()):
        top = np.quantile(np.r_[r.member_losses, r.nonmember_losses], 0.98)
        edges = np.linspace(0, max(top, 1e-3), bins)
        ax.hist(np.clip(r.member_losses, 0, top), edges, alpha=0.6, label="members (trained on)")
        ax.hist(np.clip(r.nonmember_losses, 0, top), edges, alpha=0.6, label="non-members (held out)")
        ax.set(title=f"{label}: AUC {r.auc:.3f}", xlabel="cross-entropy loss (clipped at the 98th percentile)",
               ylabel="examples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def distance_from_chance(auc: float) -> float:
    """|AUC - 0.5|: how far an attack is from guessing, whichever way it leans."""
    return abs(auc - 0.5) if math.isfinite(auc) else math.nan
