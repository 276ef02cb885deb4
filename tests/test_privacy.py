"""labkit.privacy: Opacus plumbing (training, accounting, reference gradients) on tiny data."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import models, privacy


def _tiny(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 28, 28)) < 0.2).astype(np.float32)
    y = rng.integers(0, 10, n)
    return x, y


def test_private_run_reports_spent_epsilon_within_target_and_unwraps_the_model():
    x, y = _tiny()
    run = privacy.train_private(models.TanhCNN(), x, y, epochs=2, batch_size=64, lr=0.1, max_grad_norm=1.0,
                                target_epsilon=4.0, delta=1e-3, progress=False)
    assert run.private and 0 < run.epsilon <= 4.0 + 1e-6 and run.noise_multiplier > 0
    assert isinstance(run.model, models.TanhCNN) and not run.model.training
    assert run.sample_rate == pytest.approx(64 / 256) and len(run.seconds_per_epoch) == 2
    with torch.no_grad():
        assert run.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)  # usable without Opacus' hooks


def test_non_private_run_has_infinite_epsilon_and_same_interface():
    x, y = _tiny()
    run = privacy.train_private(models.TanhCNN(), x, y, epochs=1, batch_size=64, lr=0.1, progress=False)
    assert not run.private and math.isinf(run.epsilon) and run.noise_multiplier == 0.0


@pytest.mark.parametrize("delta, n, phrase", [(0.5, 100, "not below 1/n"), (0.0, 100, "not a probability"),
                                              (1e-2, 100, "not below 1/n")])
def test_delta_must_be_a_probability_below_one_over_n(delta, n, phrase):
    with pytest.raises(ValueError, match=phrase):
        privacy.check_delta(delta, n)
    assert privacy.check_delta(1e-5, 60000) == 1e-5


def test_bad_settings_are_refused_with_a_reason():
    x, y = _tiny(64)
    with pytest.raises(ValueError, match="target_epsilon must be a positive number"):
        privacy.train_private(models.TanhCNN(), x, y, epochs=1, batch_size=16, lr=0.1, target_epsilon=-1)
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(ValueError, match="ModuleValidator.fix"):
        privacy.train_private(bn, x, y, epochs=1, batch_size=16, lr=0.1, target_epsilon=1.0, delta=1e-3)


def test_opacus_reference_gradient_is_the_clipped_average_of_per_sample_gradients():
    torch.manual_seed(0)
    model = models.TanhCNN()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    per_sample = privacy.opacus_per_sample_gradients(model, x, y)
    # per-example gradients average to the ordinary batch gradient
    batch = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    for g, (name, ps) in zip(batch, per_sample.items()):
        assert torch.allclose(ps.mean(0), g, atol=1e-6), name
    clip = 0.5
    norms = torch.cat([g.flatten(1) for g in per_sample.values()], 1).norm(dim=1)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    ref = privacy.opacus_dp_gradient(model, x, y, clip, 0.0)
    for name, ps in per_sample.items():
        assert torch.allclose(ref[name], torch.einsum("b,b...->...", factor, ps) / 8, atol=1e-6), name
    noisy = privacy.opacus_dp_gradient(model, x, y, clip, 1.0, torch.Generator().manual_seed(3))
    again = privacy.opacus_dp_gradient(model, x, y, clip, 1.0, torch.Generator().manual_seed(3))
    assert all(torch.equal(noisy[k], again[k]) for k in noisy)
    assert all(p.grad is None for p in model.parameters())  # the model itself is untouched


def test_sweep_rows_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    x, y = _tiny(128)
    rows = privacy.epsilon_sweep(models.TanhCNN, x, y, x[:32], y[:32], [2.0, None], epochs=1, batch_size=32, lr=0.1,
                                 delta=1e-3, progress=False)
    assert [r["target_epsilon"] for r in rows] == [2.0, math.inf]
    assert rows[0]["epsilon"] <= 2.0 + 1e-6 and 0 <= rows[1]["accuracy"] <= 1
    fig = privacy.plot_sweep(rows, published={"paper": (3.0, 0.9)})
    assert fig.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="epsilons is empty"):
        privacy.epsilon_sweep(models.TanhCNN, x, y, x, y, [])
