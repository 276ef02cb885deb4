"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019): the reference `predict` and `certify`,
the Clopper-Pearson bound, the radius cap a sample count imposes, noise-augmented training, and
the smoothed soft classifier that an L2 attack aims at (Salman et al. 2019).

The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), is constant within
L2 radius sigma * Phi^-1(p_A) of x when class c_A has probability p_A >= 1/2 under the noise.
`certify` estimates a lower bound on p_A from samples, so each certificate holds with
probability at least 1 - alpha over the noise. Noise comes from an explicit `torch.Generator`, so
the same generator seed gives the same counts.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

ABSTAIN = -1

__all__ = ["ABSTAIN", "sample_counts", "lower_confidence_bound", "radius", "predict", "certify", "certify_batch",
           "radius_cap", "certified_accuracy", "train_with_noise", "SmoothedSoft", "generator"]


def generator(seed: int, device="cpu") -> torch.Generator:
    """A torch generator seeded with `seed`: the one source of noise for a run."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


@torch.no_grad()
def sample_counts(model: nn.Module, x: torch.Tensor, n: int, sigma: float, generator: torch.Generator | None = None,
                  num_classes: int = 10, batch_size: int = 1000) -> np.ndarray:
    """How often the base model predicts each class on n noisy copies of one image x (C, H, W).
    The noise is not clipped to [0, 1] (the certificate is for the unclipped Gaussian)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = int(n)
    device = x.device
    while remaining > 0:
        b = min(batch_size, remaining)
        batch = x.unsqueeze(0).expand(b, *x.shape)
        noise = torch.randn(batch.shape, generator=generator, device=device) * sigma
        pred = model(batch + noise).argmax(1)
        counts += np.bincount(pred.cpu().numpy(), minlength=num_classes)
        remaining -= b
    return counts


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion after k
    successes in n trials: the alpha quantile of Beta(k, n - k + 1); 0 when k = 0. The same number
    as statsmodels' proportion_confint(k, n, alpha=2 * alpha, method="beta")[0], which ART uses."""
    if k <= 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def radius(p_a_lower: float, sigma: float) -> float:
    """Certified L2 radius sigma * Phi^-1(p_A lower) (Cohen et al., Theorem 1 with p_B = 1 - p_A)."""
    return float(sigma * norm.ppf(p_a_lower))


def radius_cap(sigma: float, n: int, alpha: float) -> float:
    """The largest radius `certify` can ever return with n samples: every sample agrees, so
    p_A lower = alpha ** (1 / n) and the radius is sigma * Phi^-1(alpha ** (1 / n))."""
    return radius(alpha ** (1.0 / n), sigma)


def predict(model: nn.Module, x: torch.Tensor, sigma: float, n: int, alpha: float,
            generator: torch.Generator | None = None, num_classes: int = 10, batch_size: int = 1000) -> int:
    """Cohen et al.'s PREDICT: the top class of n noisy samples, or ABSTAIN when a two-sided
    binomial test cannot tell the top two counts apart at level alpha (wrong with prob. <= alpha)."""
    counts = sample_counts(model, x, n, sigma, generator, num_classes, batch_size)
    top2 = np.argsort(counts)[::-1][:2]
    n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
    if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(top2[0])


def certify(model: nn.Module, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float,
            generator: torch.Generator | None = None, num_classes: int = 10,
            batch_size: int = 1000) -> tuple[int, float]:
    """Cohen et al.'s CERTIFY: guess the top class from n0 selection samples, then bound its
    probability from n fresh estimation samples. Returns (class, radius), or (ABSTAIN, 0.0) when
    the lower bound on p_A is below 1/2."""
    selection = sample_counts(model, x, n0, sigma, generator, num_classes, batch_size)
    c_a = int(selection.argmax())
    estimation = sample_counts(model, x, n, sigma, generator, num_classes, batch_size)
    p_lower = lower_confidence_bound(int(estimation[c_a]), n, alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    return c_a, radius(p_lower, sigma)


def certify_batch(certify_fn, model, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float,
                  generator: torch.Generator | None = None, progress: bool = True, desc: str = "certify"):
    """Run `certify_fn(model, x_i, sigma, n0, n, alpha, generator)` on every image of x; returns
    numpy arrays (predictions, radii)."""
    from tqdm.auto import tqdm

    preds, radii = [], []
    for xi in tqdm(x, desc=desc, disable=not progress, leave=False):
        c, r = certify_fn(model, xi, sigma, n0, n, alpha, generator)
        preds.append(int(c))
        radii.append(float(r))
    return np.array(preds), np.array(radii)


def certified_accuracy(preds, radii, labels, r: float) -> float:
    """Share of images certified correct with a radius of at least r (abstentions count as wrong)."""
    preds, radii, labels = np.asarray(preds), np.asarray(radii), np.asarray(labels)
    return float(((preds == labels) & (radii >= r)).mean())


def train_with_noise(model: nn.Module, x, y, sigma: float, **fit_kwargs):
    """Gaussian data augmentation (Cohen et al. Section 4): train the base model on x + N(0, sigma^2),
    fresh noise every batch, with `labkit.train.fit`. The noisy images are not clipped, the same as
    the noise the certificate assumes."""
    from . import train

    def add_noise(_model, xb, _yb):
        return xb + sigma * torch.randn_like(xb)

    return train.fit(model, x, y, perturb=add_noise, **fit_kwargs)


class SmoothedSoft(nn.Module):
    """The soft smoothed classifier log E[softmax(f(x + e))], estimated with m noise samples per
    call: the differentiable target of the L2 attack on a smoothed model (Salman et al. 2019).
    Fresh noise on every forward pass, drawn from `generator`."""

    def __init__(self, model: nn.Module, sigma: float, m: int = 16, generator: torch.Generator | None = None):
        super().__init__()
        self.model, self.sigma, self.m, self.generator = model, float(sigma), int(m), generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rep = x.repeat_interleave(self.m, 0)
        noise = torch.randn(rep.shape, generator=self.generator, device=x.device) * self.sigma
        probs = torch.softmax(self.model(rep + noise), 1).reshape(len(x), self.m, -1).mean(1)
        return torch.log(probs.clamp_min(1e-20))
