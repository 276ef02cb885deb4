"""labkit.membership: the loss-threshold attack separates memorised members and is at chance otherwise."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import membership


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 2, (n,), generator=g)


def _memoriser(x, y):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_memorised_members_are_found_and_a_constant_model_is_at_chance():
    x_in, y_in = _data(64, 1)
    x_out, y_out = _data(100, 2)  # more non-members than members: the attack balances them
    result = membership.loss_threshold_attack(_memoriser(x_in, y_in), x_in, y_in, x_out, y_out, seed=0)
    assert result.n_members == result.n_nonmembers == 64
    assert result.auc > 0.9 and result.tpr_at_1_fpr > 0.3 and result.advantage > 0.6

    constant = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    nn.init.zeros_(constant[1].weight)
    nn.init.zeros_(constant[1].bias)
    chance = membership.loss_threshold_attack(constant, x_in, y_in, x_out, y_out, seed=0)
    assert chance.auc == pytest.approx(0.5) and membership.distance_from_chance(chance.auc) == pytest.approx(0.0)
    assert chance.as_row("constant")["attack AUC"] == pytest.approx(0.5)


def test_tpr_at_fpr_and_balanced_sets():
    fpr, tpr = np.array([0.0, 0.005, 0.02, 1.0]), np.array([0.0, 0.2, 0.5, 1.0])
    assert membership.tpr_at_fpr(fpr, tpr, 0.01) == 0.2
    assert membership.tpr_at_fpr(np.array([0.5, 1.0]), np.array([0.5, 1.0]), 0.01) == 0.0
    a, b = membership.balanced(10, 30, seed=1)
    assert len(a) == len(b) == 10 and len(set(b)) == 10
    with pytest.raises(ValueError, match="Cannot draw"):
        membership.balanced(10, 30, size=11)


def test_losses_and_mismatched_labels():
    x, y = _data(5, 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    losses = membership.example_losses(model, x, y)
    assert losses.shape == (5,) and (losses >= 0).all()
    with pytest.raises(ValueError, match="one label per image"):
        membership.loss_threshold_attack(model, x, y[:4], x, y)


def test_plots_draw_one_curve_per_model():
    import matplotlib

    matplotlib.use("Agg")
    x_in, y_in = _data(32, 1)
    x_out, y_out = _data(32, 2)
    results = {"a": membership.loss_threshold_attack(_memoriser(x_in, y_in), x_in, y_in, x_out, y_out)}
    fig = membership.plot_roc(results)
    assert len(fig.axes) == 2
    assert len(membership.plot_loss_histograms(results).axes) == 1


def test_difficulty_calibration_scores_against_a_reference_model():
    x_in, y_in = _data(64, 1)
    x_out, y_out = _data(64, 2)
    target = _memoriser(torch.cat([x_in, x_out[:8]]), torch.cat([y_in, y_out[:8]]))
    reference = _memoriser(x_out[:8], y_out[:8])
    plain = membership.loss_threshold_attack(target, x_in, y_in, x_out[8:], y_out[8:], seed=0)
    calibrated = membership.loss_threshold_attack(target, x_in, y_in, x_out[8:], y_out[8:], seed=0, reference=reference)
    assert plain.auc > 0.75 and calibrated.auc > 0.6  # both see a memoriser
    same = membership.loss_threshold_attack(target, x_in, y_in, x_out[8:], y_out[8:], seed=0, reference=target)
    assert same.auc == pytest.approx(0.5)  # calibrating against the model itself leaves nothing
    np.testing.assert_allclose(calibrated.member_losses, plain.member_losses)  # histograms show the model's losses
