"""labkit.smoothing: the Clopper-Pearson bound against scipy, the radius on hand-computed cases,
the radius cap, predict/certify on models whose answers are known, and certificates that an L2
PGD attack (ART) does not break on a tiny model."""
import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from labkit import smoothing


@pytest.mark.parametrize("k, n, alpha", [(500, 500, 0.001), (480, 500, 0.001), (300, 500, 0.001),
                                         (820, 1000, 0.001), (99, 100, 0.01), (9_990, 10_000, 0.001), (1, 10, 0.05)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n, alpha):
    # scipy's two-sided exact (Clopper-Pearson) interval at confidence 1 - 2 alpha has the one-sided bound as its low end
    expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert smoothing.lower_confidence_bound(k, n, alpha) == pytest.approx(expected, abs=1e-10)


def test_clopper_pearson_known_values():
    assert smoothing.lower_confidence_bound(0, 100, 0.001) == 0.0
    assert smoothing.lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))  # all agree
    assert smoothing.lower_confidence_bound(50, 100, 0.001) < 0.5 < smoothing.lower_confidence_bound(70, 100, 0.001)


def test_clopper_pearson_matches_statsmodels_as_art_calls_it():
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for k, n in [(820, 1000), (500, 500), (61, 100)]:
        assert smoothing.lower_confidence_bound(k, n, 0.001) == pytest.approx(
            proportion.proportion_confint(k, n, alpha=2 * 0.001, method="beta")[0], abs=1e-12)


def test_radius_hand_computed():
    assert smoothing.radius(0.5, 0.25) == pytest.approx(0.0, abs=1e-12)
    assert smoothing.radius(norm.cdf(1.0), 0.25) == pytest.approx(0.25)  # Phi^-1 = 1 -> sigma
    assert smoothing.radius(norm.cdf(2.0), 0.5) == pytest.approx(1.0)
    assert smoothing.radius(0.975, 1.0) == pytest.approx(1.959964, abs=1e-6)


def test_radius_cap_table():
    # with every sample agreeing: sigma * Phi^-1(alpha ** (1 / n))
    assert smoothing.radius_cap(0.25, 500, 0.001) == pytest.approx(0.551, abs=1e-3)
    assert smoothing.radius_cap(0.25, 100_000, 0.001) == pytest.approx(0.953, abs=1e-3)
    assert smoothing.radius_cap(0.5, 1000, 0.001) == pytest.approx(2 * smoothing.radius_cap(0.25, 1000, 0.001))


class Constant(nn.Module):
    def __init__(self, cls, num_classes=10):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.cls), self.num_classes).float()


class CoinFlip(nn.Module):  # class 0 or 1 by the sign of the noise in the first pixel: a tie
    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0], -x[:, 0, 0, 0]], 1)


def test_certify_constant_model_reaches_the_cap_and_predict_answers():
    x = torch.zeros(1, 4, 4)
    c, r = smoothing.certify(Constant(3), x, 0.25, 50, 500, 0.001, smoothing.generator(0))
    assert c == 3 and r == pytest.approx(smoothing.radius_cap(0.25, 500, 0.001))
    assert smoothing.predict(Constant(3), x, 0.25, 100, 0.001, smoothing.generator(0)) == 3


def test_tie_abstains_in_both():
    x = torch.zeros(1, 4, 4)
    assert smoothing.predict(CoinFlip(), x, 0.5, 1000, 0.001, smoothing.generator(0), num_classes=2) == smoothing.ABSTAIN
    assert smoothing.certify(CoinFlip(), x, 0.5, 100, 1000, 0.001, smoothing.generator(0), num_classes=2) == (-1, 0.0)


def test_same_generator_seed_same_counts_and_batching_does_not_matter():
    x = torch.full((1, 4, 4), 0.01)
    a = smoothing.sample_counts(CoinFlip(), x, 777, 0.5, smoothing.generator(4), num_classes=2, batch_size=777)
    b = smoothing.sample_counts(CoinFlip(), x, 777, 0.5, smoothing.generator(4), num_classes=2, batch_size=777)
    assert (a == b).all() and a.sum() == 777


def test_certified_accuracy_counts_abstentions_as_wrong():
    preds, radii, labels = np.array([1, -1, 2, 3]), np.array([0.6, 0.0, 0.3, 0.9]), np.array([1, 1, 2, 0])
    assert smoothing.certified_accuracy(preds, radii, labels, 0.0) == 0.5
    assert smoothing.certified_accuracy(preds, radii, labels, 0.5) == 0.25


def test_no_certified_point_broken_by_art_l2_pgd_on_a_tiny_model():
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(24, 1, 4, 4)
    y = model(x).argmax(1).numpy()  # the base model's own labels: certificates on most points
    sigma, gen, r = 0.25, smoothing.generator(1), 0.2
    certs = [smoothing.certify(model, xi, sigma, 50, 500, 0.001, gen, num_classes=3) for xi in x]
    pred, rad = np.array([c for c, _ in certs]), np.array([q for _, q in certs])
    certified = (pred == y) & (rad >= r)
    assert certified.sum() >= 5
    target = PyTorchClassifier(smoothing.SmoothedSoft(model, sigma, m=32, generator=gen), loss=nn.NLLLoss(),
                               input_shape=(1, 4, 4), nb_classes=3, clip_values=(0.0, 1.0), device_type="cpu")
    attack = ProjectedGradientDescent(target, norm=2, eps=r, eps_step=r / 4, max_iter=20, verbose=False)
    x_adv = torch.from_numpy(attack.generate(x.numpy(), y=y))
    assert ((x_adv - x).flatten(1).norm(dim=1) <= r + 1e-4).all()
    after = np.array([smoothing.predict(model, xi, sigma, 1000, 0.001, gen, num_classes=3) for xi in x_adv])
    assert not (certified & (after != y) & (after != smoothing.ABSTAIN)).any()
    assert ((after != y) & (after != smoothing.ABSTAIN)).any(), "the attack should fool some uncertified points"


def test_train_with_noise_trains_on_noisy_batches(monkeypatch):
    from labkit import train

    seen = {}

    def fake_fit(model, x, y, perturb=None, **kwargs):
        xb = torch.zeros(64, 1, 4, 4)
        seen["std"] = perturb(model, xb, None).std().item()
        return []

    monkeypatch.setattr(train, "fit", fake_fit)
    smoothing.train_with_noise(nn.Identity(), None, None, 0.5)
    assert seen["std"] == pytest.approx(0.5, rel=0.1)
