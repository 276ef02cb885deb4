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
