"""labkit.attacks: the cleverhans wrappers and FGSM with a random start."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit import attacks, models, train

EPS = 0.3


@pytest.fixture(scope="module")
def bench():
    """A seeded SmallCNN fitted to a synthetic batch; pixels at exactly 0 and 1 exercise clipping."""
    torch.manual_seed(0)
    x = (torch.rand(48, 1, 28, 28) < 0.2).float()
    y = torch.randint(0, 10, (48,))
    model = models.SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, x, y


def loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def assert_valid(x_adv, x, eps):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= eps + 1e-6


def test_fgsm_reference_is_signed_gradient_step(bench):
    model, x, y = bench
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    expected = (x + EPS * g.sign()).clamp(0, 1)
    x_adv = attacks.fgsm_reference(model, x, EPS, y=y)
    assert_valid(x_adv, x, EPS)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    assert loss(model, x_adv, y) > loss(model, x, y)


def test_attacks_leave_model_untouched(bench):
    model, x, y = bench
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    attacks.fgsm_reference(model, x, EPS, y=y)
    attacks.pgd(model, x, y, EPS, 0.05, 3)
    attacks.fgsm_random_start(model, x, y, EPS, 1.25 * EPS)
    assert model.training
    assert all(p.grad is None for p in model.parameters()), "cleverhans' backward() must not leak into .grad"
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    model.eval()


def test_pgd_stays_in_ball_and_beats_fgsm(bench):
    model, x, y = bench
    torch.manual_seed(1)
    x_pgd = attacks.pgd(model, x, y, EPS, step=0.05, steps=10)
    assert_valid(x_pgd, x, EPS)
    assert loss(model, x_pgd, y) >= loss(model, attacks.fgsm_reference(model, x, EPS, y=y), y) - 1e-3


def test_pgd_without_random_start_is_deterministic(bench):
    model, x, y = bench
    a = attacks.pgd(model, x, y, 0.1, 0.02, 5, rand_init=False)
    b = attacks.pgd(model, x, y, 0.1, 0.02, 5, rand_init=False)
    assert torch.equal(a, b)
    assert_valid(a, x, 0.1)


def test_fgsm_random_start(bench):
    model, x, y = bench
    a = attacks.fgsm_random_start(model, x, y, EPS, 1.25 * EPS)
    b = attacks.fgsm_random_start(model, x, y, EPS, 1.25 * EPS)
    assert_valid(a, x, EPS)
    assert not torch.equal(a, b), "the start must be random"
    assert not torch.allclose(a, attacks.fgsm_reference(model, x, EPS, y=y))
    assert loss(model, a, y) > loss(model, x, y)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(attacks.fgsm_random_start(model, x, y, EPS, 0.375, generator=g1),
                       attacks.fgsm_random_start(model, x, y, EPS, 0.375, generator=g2))


def test_accuracy_under_attack(bench):
    model, x, y = bench
    clean = attacks.accuracy_under_attack(model, x, y, "fgsm", eps=0, progress=False)
    assert clean == pytest.approx(train.evaluate(model, x, y, progress=False))
    weak = attacks.accuracy_under_attack(model, x, y, "fgsm", eps=0.02, batch_size=16, progress=False)
    strong = attacks.accuracy_under_attack(model, x, y, "pgd", eps=EPS, step=0.05, steps=5, progress=False)
    assert 0.0 <= strong <= weak <= clean <= 1.0
    assert strong < clean
    custom = attacks.accuracy_under_attack(model, x, y, lambda m, xb, yb, eps: torch.zeros_like(xb), eps=0.1,
                                           progress=False)
    assert 0.0 <= custom <= 1.0


def test_accuracy_under_attack_accepts_uint8_numpy(bench):
    model, x, y = bench
    x_uint8 = (x.squeeze(1).numpy() * 255).astype(np.uint8)
    a = attacks.accuracy_under_attack(model, x_uint8, y.numpy(), "fgsm", eps=0.1, progress=False)
    b = attacks.accuracy_under_attack(model, x, y, "fgsm", eps=0.1, progress=False)
    assert a == pytest.approx(b)


def test_unknown_attack_name(bench):
    model, x, y = bench
    with pytest.raises(KeyError, match="Unknown attack 'cw'"):
        attacks.accuracy_under_attack(model, x, y, "cw", eps=0.1, progress=False)


# --- the evaluation ladder: ART's APGD and Square, PGD with restarts, the worst case ----------------

def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("loss_name", ["ce", "dlr"])
def test_apgd_stays_in_ball_beats_fgsm_and_leaves_model_untouched(bench, loss_name):
    model, x, y = bench
    state = np.random.get_state()
    model.train()
    x_adv = attacks.apgd(model, x, y, EPS, loss=loss_name, steps=10, restarts=2, seed=3)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    assert_valid(x_adv, x, EPS)
    assert accuracy(model, x_adv, y) <= accuracy(model, attacks.fgsm_reference(model, x, EPS, y=y), y)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)
    assert torch.equal(x_adv, attacks.apgd(model, x, y, EPS, loss=loss_name, steps=10, restarts=2, seed=3)), "seeded"
    assert all(np.array_equal(a, b) for a, b in zip(state[1:2], np.random.get_state()[1:2])), "numpy state restored"


def test_apgd_rejects_an_unknown_loss(bench):
    model, x, y = bench
    with pytest.raises(ValueError, match="'ce' or 'dlr'"):
        attacks.apgd(model, x, y, EPS, loss="cw")


def test_square_is_black_box_and_stays_in_ball(bench):
    model, x, y = bench
    x_adv = attacks.square(model, x, y, EPS, queries=30, seed=0)
    assert_valid(x_adv, x, EPS)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_restarts_only_add_to_the_first_start(bench):
    model, x, y = bench
    torch.manual_seed(4)
    single = attacks.pgd(model, x, y, 0.1, 0.02, 3)
    torch.manual_seed(4)
    multi = attacks.pgd_restarts(model, x, y, 0.1, 0.02, 3, restarts=4)
    assert_valid(multi, x, 0.1)
    with torch.no_grad():
        ok_single, ok_multi = model(single).argmax(1) == y, model(multi).argmax(1) == y
    assert not (ok_multi & ~ok_single).any(), "an image fooled by the first start stays fooled"
    with pytest.raises(ValueError, match="at least 1"):
        attacks.pgd_restarts(model, x, y, 0.1, 0.02, 3, restarts=0)


class OneHotReader(torch.nn.Module):
    """Predicts the position of the largest of the first 10 pixels of row 0."""

    def forward(self, x):
        return x[:, 0, 0, :10]


def marked_images():
    """Six images of classes 0..5; pixel 20 marks the ones attack "a" fools, pixel 21 those "b" fools."""
    x = torch.zeros(6, 1, 28, 28)
    y = torch.arange(6)
    x[y, 0, 0, y] = 1.0
    x[[0, 1], 0, 0, 20] = 1.0
    x[[1, 2, 3], 0, 0, 21] = 1.0
    return x, y


def fooling(pixel):
    def attack(model, x, y):
        x = x.clone()
        hit = x[:, 0, 0, pixel] == 1
        x[hit, 0, 0, :10] = x[hit, 0, 0, :10].roll(1, dims=1)
        return x
    return attack


def test_ladder_takes_the_per_image_worst_case():
    model, (x, y) = OneHotReader(), marked_images()
    result = attacks.ladder(model, x, y, {"none": lambda m, xb, yb: xb, "a": fooling(20), "b": fooling(21)},
                            worst_of=("a", "b"), batch_size=4, progress=False)
    assert result.accuracy["none"] == 1.0
    assert result.accuracy["a"] == pytest.approx(4 / 6) and result.accuracy["b"] == pytest.approx(3 / 6)
    assert result.worst == pytest.approx(2 / 6), "an image counts as robust only if every attack failed on it"
    assert result.robust["worst case"].tolist() == [False, False, False, False, True, True]
    assert [row[0] for row in result.rows()] == ["none", "a", "b", "worst case"]
    assert "worst case" in result.table() and "33.3%" in result.table()


def test_ladder_sizes_and_worst_of_errors():
    model, (x, y) = OneHotReader(), marked_images()
    rungs = {"a": fooling(20), "b": fooling(21)}
    result = attacks.ladder(model, x, y, rungs, sizes={"b": 3}, progress=False)
    assert result.images == {"a": 6, "b": 3} and "worst case" not in result.accuracy
    with pytest.raises(ValueError, match="same images"):
        attacks.ladder(model, x, y, rungs, worst_of=("a", "b"), sizes={"b": 3}, progress=False)
    with pytest.raises(KeyError, match="not rungs"):
        attacks.ladder(model, x, y, rungs, worst_of=("a", "c"), progress=False)


def test_ladder_rungs_on_a_model(bench):
    model, x, y = bench
    rungs = attacks.ladder_rungs(EPS, pgd_step=0.05, pgd_steps=3, restarts=2, apgd_steps=5, apgd_restarts=1,
                                 square_queries=10)
    assert list(rungs) == ["FGSM", "PGD-3", "PGD-3, 2 restarts", "APGD-CE", "APGD-DLR", "Square, 10 queries"]
    torch.manual_seed(0)
    result = attacks.ladder(model, x, y, rungs, worst_of=("APGD-CE", "APGD-DLR"), sizes={"Square, 10 queries": 16},
                            progress=False)
    assert result.images["Square, 10 queries"] == 16
    assert result.worst <= min(result.accuracy["APGD-CE"], result.accuracy["APGD-DLR"])
    assert result.accuracy["PGD-3, 2 restarts"] <= result.accuracy["PGD-3"] + 1e-9


def test_attack_ladder_plot_highlights_the_worst_case():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit import plots

    model, (x, y) = OneHotReader(), marked_images()
    result = attacks.ladder(model, x, y, {"a": fooling(20), "b": fooling(21)}, worst_of=("a", "b"), progress=False)
    fig = plots.attack_ladder(result)
    bars = fig.axes[0].patches
    assert len(bars) == 3 and bars[-1].get_width() == pytest.approx(2 / 6)
    assert bars[-1].get_facecolor() != bars[0].get_facecolor()
    plt.close(fig)
