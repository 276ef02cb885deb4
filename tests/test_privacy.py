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


@pytest.mark.parametrize("delta, n, verdict", [(1e-6, 60_000, "OK"), (1e-5, 60_000, "not well below"),
                                               (1e-5, 1_214, "OK"), (1e-3, 1_000, "TOO LARGE")])
def test_delta_advice_agrees_with_the_rule(delta, n, verdict):
    assert privacy.delta_advice(delta, n).startswith(verdict) or verdict in privacy.delta_advice(delta, n)
    if verdict != "OK":
        assert "choose delta <=" in privacy.delta_advice(delta, n)


def test_cohorts_are_disjoint_stratified_halves():
    y = np.r_[np.zeros(60), np.ones(40)].astype(int)
    private, dev = privacy.split_cohorts(y, 0.5, seed=1)
    assert len(private) == len(dev) == 50 and not set(private) & set(dev)
    assert y[private].mean() == pytest.approx(0.4) and y[dev].mean() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="dev_fraction"):
        privacy.split_cohorts(y, 1.0)
    # the same image stored twice never ends up in both cohorts
    x, _ = _tiny(100, seed=2)
    x[[10, 60, 90]] = x[3]
    private, dev = privacy.split_cohorts(y, 0.5, seed=1, x=x)
    assert len(private) + len(dev) == 100 and {3, 10, 60, 90} <= set(private) or {3, 10, 60, 90} <= set(dev)
    assert privacy._fingerprints(x[private]).isdisjoint(privacy._fingerprints(x[dev]))


def test_composition_two_libraries_and_the_edge_cases():
    one = [(1.0, 0.01, 1000)]
    rdp = privacy.compose_epsilon(one, 1e-5, "opacus-rdp")
    assert privacy.compose_epsilon(one, 1e-5, "dp_accounting-rdp") == pytest.approx(rdp, rel=0.02)
    assert privacy.compose_epsilon(one, 1e-5, "dp_accounting-pld") < rdp
    assert privacy.compose_epsilon(one, 1e-5, "opacus-prv") < rdp
    twice = privacy.compose_epsilon(one * 2, 1e-5, "opacus-rdp")
    assert rdp < twice < 2 * rdp  # composition costs, but less than adding the epsilons
    assert privacy.compose_epsilon([], 1e-5) == 0.0
    assert math.isinf(privacy.compose_epsilon([(0.0, 0.01, 10)], 1e-5))
    with pytest.raises(ValueError, match="unknown"):
        privacy.compose_epsilon(one, 1e-5, "moments")


def test_ledger_counts_every_run_that_touched_the_records():
    x, y = _tiny(256)
    private, dev = x[:128], x[128:]
    ledger = privacy.Ledger()
    settings = dict(epochs=1, batch_size=32, lr=0.1, delta=1e-3, progress=False, ledger=ledger)
    privacy.train_private(models.TanhCNN(), dev, y[128:], target_epsilon=1.0, desc="tune on dev", **settings)
    final = privacy.train_private(models.TanhCNN(), private, y[:128], target_epsilon=2.0, desc="final", **settings)
    honest = ledger.spent_on(private, 1e-3)
    assert honest.uses == ("final",) and honest.epsilon == pytest.approx(final.epsilon, rel=1e-6)
    assert final.accounting and sum(h[2] for h in final.accounting) == final.steps
    # the same images as floats in [0, 1] are the same records
    assert ledger.spent_on(private.astype(np.float32), 1e-3).uses == ("final",)
    # tuning on the private records: the spend composes and exceeds the final run's epsilon
    privacy.train_private(models.TanhCNN(), private, y[:128], target_epsilon=1.0, desc="tune on private", **settings)
    assert ledger.spent_on(private, 1e-3).epsilon > final.epsilon + 0.1
    assert ledger.spent_on(private, 1e-3, "dp_accounting-pld").runs == 2
    # any non-private run on a subset of the records: nothing is promised any more
    privacy.train_private(models.TanhCNN(), private[:40], y[:40], desc="attack pair", **settings)
    spend = ledger.spent_on(private, 1e-3)
    assert math.isinf(spend.epsilon) and spend.uses[-1] == "attack pair"
    assert ledger.spent_on(dev, 1e-3).uses == ("tune on dev",)
