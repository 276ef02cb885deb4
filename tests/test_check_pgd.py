"""labkit.check.pgd and labkit.check.adversarial_step: the right answers pass, and each typical
mistake fails with a sentence that names it."""
import pytest
import torch
import torch.nn.functional as F

from labkit import check
import importlib

pgd_check = importlib.import_module("labkit.check.pgd")
from labkit.check.common import bench


def _grad(model, x, y):
    x = x.clone().detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return g


def make_pgd(random_start=True, project=True, clip=True, sign=True, ascent=True, center_start=False,
             frozen=False, steps_offset=0, start="uniform"):
    def pgd(model, x, y, eps, alpha, steps):
        if not random_start:
            x_adv = x.clone()
        elif start == "uniform":
            x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        elif start == "gaussian":
            x_adv = (x + eps * torch.randn_like(x)).clamp(0, 1)
        elif start == "positive":
            x_adv = (x + torch.rand_like(x) * eps).clamp(0, 1)
        center = x_adv.clone() if center_start else x
        g0 = _grad(model, x_adv, y) if frozen else None
        for _ in range(steps + steps_offset):
            g = g0 if frozen else _grad(model, x_adv, y)
            step = g.sign() if sign else g
            x_adv = x_adv + (alpha if ascent else -alpha) * step
            if project:
                x_adv = torch.min(torch.max(x_adv, center - eps), center + eps)
            if clip:
                x_adv = x_adv.clamp(0, 1)
        return x_adv.detach()

    return pgd


def test_a_correct_pgd_passes_and_reports_arts_numbers():
    fb = check.pgd(make_pgd())
    assert fb.passed and "ART" in fb.message


@pytest.mark.parametrize("kwargs, words", [
    (dict(project=False), "no projection"),
    (dict(random_start=False), "no random start"),
    (dict(sign=False), "without the sign"),
    (dict(clip=False), "no clipping to [0, 1]"),
    (dict(ascent=False), "descent instead of ascent"),
    (dict(center_start=True), "around the random start"),
    (dict(frozen=True), "gradient once"),
    (dict(steps_offset=-1), "steps"),
    (dict(start="gaussian"), "uniformly"),
    (dict(start="positive"), "only goes up"),
])
def test_each_typical_pgd_mistake_is_named(kwargs, words):
    with pytest.raises(check.ExerciseFailed) as err:
        check.pgd(make_pgd(**kwargs))
    assert words in str(err.value), str(err.value)


def test_pgd_todo_and_wrong_return_are_explained():
    def todo(model, x, y, eps, alpha, steps):
        raise NotImplementedError

    with pytest.raises(check.ExerciseFailed, match="TODO"):
        check.pgd(todo)
    with pytest.raises(check.ExerciseFailed, match="returned None"):
        check.pgd(lambda model, x, y, eps, alpha, steps: None)


def test_the_replay_is_arts_update_step_for_step():
    """From the clean image (ART with num_random_init=0) the replay and ART agree pixel for pixel."""
    model, x, y = bench()
    ours = pgd_check.pgd_replay(model, x, y, x, 0.1, 0.025, 10)
    art = pgd_check.art_pgd(model, x, y, 0.1, 0.025, 10, random_init=False)
    assert (ours - art).abs().max().item() < 1e-4


def make_step(mix=(0.5, 0.5), zero_grad=True, step=True, leave_eval=False, return_tensor=False):
    def adversarial_step(model, optimizer, x, y, attack):
        x_adv = attack(model, x, y)
        if leave_eval:
            model.eval()
        else:
            model.train()
        if zero_grad:
            optimizer.zero_grad()
        loss = mix[0] * F.cross_entropy(model(x), y) + mix[1] * F.cross_entropy(model(x_adv), y)
        loss.backward()
        if step:
            optimizer.step()
        return loss if return_tensor else loss.item()

    return adversarial_step


def test_a_correct_adversarial_step_passes():
    assert check.adversarial_step(make_step()).passed


def test_a_concatenated_batch_is_the_same_mixture():
    def concat(model, optimizer, x, y, attack):
        x_adv = attack(model, x, y)
        model.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(torch.cat([x, x_adv])), torch.cat([y, y]))
        loss.backward()
        optimizer.step()
        return loss.item()

    assert check.adversarial_step(concat).passed


@pytest.mark.parametrize("kwargs, words", [
    (dict(zero_grad=False), "zero_grad"),
    (dict(mix=(0.0, 1.0)), "adversarial images only"),
    (dict(mix=(1.0, 0.0)), "clean images only"),
    (dict(mix=(1.0, 1.0)), "without averaging"),
    (dict(step=False), "optimizer.step()"),
    (dict(leave_eval=True), "eval mode"),
    (dict(return_tensor=True), "loss.item()"),
])
def test_each_typical_step_mistake_is_named(kwargs, words):
    with pytest.raises(check.ExerciseFailed) as err:
        check.adversarial_step(make_step(**kwargs))
    assert words in str(err.value), str(err.value)


def test_a_step_that_never_attacks_is_named():
    def clean_only(model, optimizer, x, y, attack):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    with pytest.raises(check.ExerciseFailed, match="never called attack"):
        check.adversarial_step(clean_only)
