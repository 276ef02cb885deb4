"""Figures the labs share: adversarial-example grids, accuracy-against-budget curves, attack ladders."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F


def adversarial_grid(model, x, y, x_adv, eps: float, title: str):
    """Three rows per column: the clean image, the adversarial one (each titled with the model's
    prediction and confidence, red when wrong), and the perturbation scaled so grey = no change."""
    with torch.no_grad():
        p_clean, p_adv = F.softmax(model(x), 1), F.softmax(model(x_adv), 1)
    n = len(x)
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.6), squeeze=False)
    for i in range(n):
        rows = [(x[i], p_clean[i]), (x_adv[i], p_adv[i]), ((x_adv[i] - x[i]) / (2 * eps) + 0.5, None)]
        for r, (img, prob) in enumerate(rows):
            ax = axes[r, i]
            img = img.detach().cpu()
            ax.imshow(img.squeeze() if img.shape[0] == 1 else img.permute(1, 2, 0).clamp(0, 1),
                      cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if prob is not None:
                label = prob.argmax().item()
                ax.set_title(f"{label} ({prob.max().item():.0%})", fontsize=9,
                             color="black" if label == int(y[i]) else "red")
    axes[0, 0].set_ylabel("clean")
    axes[1, 0].set_ylabel(f"ε = {eps:g}")
    axes[2, 0].set_ylabel("change")
    fig.suptitle(title + " (red = wrong)")
    fig.tight_layout()
    return fig


def accuracy_curves(curves: dict, points: dict | None = None, title: str = "Accuracy under attack",
                    xlabel: str = "epsilon (L∞ budget, pixels in [0, 1])"):
    """curves: {label: (eps values, accuracies)}; points: {label: (eps, accuracy)} single markers
    (e.g. a PGD result at the attacker's budget)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    markers = "os^dx*"
    for i, (label, (eps, acc)) in enumerate(curves.items()):
        ax.plot(eps, acc, markers[i % len(markers)] + "-", label=label)
    for i, (label, (eps, acc)) in enumerate((points or {}).items()):
        ax.plot([eps], [acc], "v", ms=10, color=f"C{i}", label=label)
    ax.set(xlabel=xlabel, ylabel="test accuracy", ylim=(-0.03, 1.03), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def attack_ladder(ladder, title: str = "Accuracy under ever stronger attacks", highlight: str | None = None):
    """Horizontal bars, one per rung of an `attacks.Ladder` (weakest at the top), each labelled with
    its accuracy and image count; the `highlight` rung (default: the ladder's worst case) in red."""
    rows = ladder.rows()
    highlight = highlight or getattr(ladder, "worst_name", None)
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2))
    names = [f"{name} ({n})" for name, n, _, _ in rows]
    accs = [acc for _, _, acc, _ in rows]
    colours = ["C3" if name == highlight else "C0" for name, _, _, _ in rows]
    bars = ax.barh(names, accs, color=colours)
    for bar, acc in zip(bars, accs):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"{acc:.1%}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.1), xlabel="test accuracy under attack (images attacked)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
