"""labkit.check: every diagnosis fires on the mistake it describes, and a correct answer passes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit import check


def _grad(model, x, y, reduction="mean"):
    x = x.clone().detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction=reduction), x)
    return x.detach(), g


# --- FGSM: one correct answer, and one broken answer per mistake ----------------------------------

def fgsm_good(model, x, y, eps):
    x, g = _grad(model, x, y)
    return (x + eps * g.sign()).clamp(0, 1)


def fgsm_good_sum_loss(model, x, y, eps):
    x, g = _grad(model, x, y, reduction="sum")
    with torch.no_grad():
        return torch.clamp(x + eps * torch.sign(g), 0.0, 1.0)


def fgsm_todo(model, x, y, eps):
    raise NotImplementedError("TODO: your code here")


def fgsm_none(model, x, y, eps):
    fgsm_good(model, x, y, eps)


def fgsm_numpy(model, x, y, eps):
    return fgsm_good(model, x, y, eps).numpy()


def fgsm_flat(model, x, y, eps):
    return fgsm_good(model, x, y, eps).flatten(1)


def fgsm_double(model, x, y, eps):
    return fgsm_good(model, x, y, eps).double()


def fgsm_attached(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return (x + eps * x.grad.sign()).clamp(0, 1)


def fgsm_no_clip(model, x, y, eps):
    x, g = _grad(model, x, y)
    return x + eps * g.sign()


def fgsm_hard_coded(model, x, y, eps):
    return fgsm_good(model, x, y, 0.3)


def fgsm_too_small(model, x, y, eps):
    return fgsm_good(model, x, y, eps / 4)


def fgsm_raw_gradient(model, x, y, eps):
    x, g = _grad(model, x, y)
    return (x + eps * g / g.abs().max()).clamp(0, 1)


def fgsm_raw_gradient_unscaled(model, x, y, eps):
    x, g = _grad(model, x, y)
    return (x + eps * g).clamp(0, 1)


def fgsm_descent(model, x, y, eps):
    x, g = _grad(model, x, y)
    return (x - eps * g.sign()).clamp(0, 1)


def fgsm_train_mode(model, x, y, eps):
    model.train()
    return fgsm_good(model, x, y, eps)


def fgsm_changes_weights(model, x, y, eps):
    out = fgsm_good(model, x, y, eps)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    return out


def fgsm_in_place(model, x, y, eps):
    out = fgsm_good(model, x, y, eps)
    x.copy_(out)
    return out


def fgsm_identity(model, x, y, eps):
    return x.clone()


def fgsm_predicted_labels(model, x, y, eps):
    with torch.no_grad():
        predicted = model(x).argmax(1)
    return fgsm_good(model, x, predicted, eps)


def fgsm_no_requires_grad(model, x, y, eps):
    loss = F.cross_entropy(model(x.clone()), y)
    (g,) = torch.autograd.grad(loss, x)
    return (x + eps * g.sign()).clamp(0, 1)


def fgsm_crash(model, x, y, eps):
    return x[1000]


def fgsm_tuple(model, x, y, eps):
    return fgsm_good(model, x, y, eps), y


def fgsm_random_noise(model, x, y, eps):
    return (x + eps * torch.randn_like(x).sign()).clamp(0, 1)


@pytest.mark.parametrize("fn", [fgsm_good, fgsm_good_sum_loss])
def test_fgsm_accepts_correct_answers(fn, capsys):
    feedback = check.fgsm(fn)
    assert feedback.passed
    assert str(feedback).startswith("✓ fgsm:")
    assert "✓ fgsm" in capsys.readouterr().out


@pytest.mark.parametrize("fn, words", [
    (fgsm_todo, "still TODO"),
    (fgsm_none, "returned None"),
    (fgsm_numpy, "not a numpy array"),
    (fgsm_tuple, "not a tuple"),
    (fgsm_flat, "shape"),
    (fgsm_double, "dtype"),
    (fgsm_attached, "attached to the autograd graph"),
    (fgsm_no_clip, "clip after the step"),
    (fgsm_hard_coded, "larger than eps"),
    (fgsm_too_small, "hard-code"),
    (fgsm_raw_gradient, "instead of its sign"),
    (fgsm_raw_gradient_unscaled, "instead of its sign"),
    (fgsm_descent, "you subtracted the gradient step"),
    (fgsm_train_mode, "train mode"),
    (fgsm_changes_weights, "changed the model's weights"),
    (fgsm_in_place, "in place"),
    (fgsm_identity, "did not perturb"),
    (fgsm_predicted_labels, "predicted labels"),
    (fgsm_no_requires_grad, "requires_grad_"),
    (fgsm_crash, "raised IndexError"),
    (fgsm_random_noise, "differs from the reference"),
    ("fgsm", "pass your function itself"),
])
def test_fgsm_diagnoses_each_mistake(fn, words):
    with pytest.raises(check.ExerciseFailed, match=words) as info:
        check.fgsm(fn)
    assert isinstance(info.value, AssertionError)
    assert str(info.value).startswith("✗ fgsm:")


def test_fgsm_check_keeps_global_random_state():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check.fgsm(fgsm_good)
    assert torch.equal(torch.rand(3), expected)


# --- FGSM with a random start (adversarial-training perturbation) -------------------------------

def rs_good(model, x, y, eps, alpha):
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
    delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


def rs_plain_fgsm(model, x, y, eps, alpha):
    return fgsm_good(model, x, y, eps)


def rs_descent(model, x, y, eps, alpha):
    delta = torch.empty_like(x).uniform_(-eps, eps).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
    return (x + (delta.detach() - alpha * g.sign()).clamp(-eps, eps)).clamp(0, 1)


def rs_no_step(model, x, y, eps, alpha):
    return (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)


def rs_no_projection(model, x, y, eps, alpha):
    delta = torch.empty_like(x).uniform_(-eps, eps).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
    return (x + delta.detach() + alpha * g.sign()).clamp(0, 1)


def rs_no_clip(model, x, y, eps, alpha):
    delta = torch.empty_like(x).uniform_(-eps, eps).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
    return x + (delta.detach() + alpha * g.sign()).clamp(-eps, eps)


def rs_fixed_seed(model, x, y, eps, alpha):
    torch.manual_seed(0)
    return rs_good(model, x, y, eps, alpha)


def rs_gradient_at_x(model, x, y, eps, alpha):
    delta = torch.empty_like(x).uniform_(-eps, eps)
    x, g = _grad(model, x, y)
    return (x + (delta + alpha * g.sign()).clamp(-eps, eps)).clamp(0, 1)


def rs_tiny_step(model, x, y, eps, alpha):
    return rs_good(model, x, y, eps, alpha / 4)


def rs_todo(model, x, y, eps, alpha):
    raise NotImplementedError


def rs_attached(model, x, y, eps, alpha):
    return rs_good(model, x, y, eps, alpha).requires_grad_(True)


def test_fgsm_random_start_accepts_correct_answer(capsys):
    feedback = check.fgsm_random_start(rs_good)
    assert feedback.passed and feedback.details["loss"] > feedback.details["clean_loss"]
    assert "✓ fgsm_random_start" in capsys.readouterr().out
    assert check.adversarial_batch is check.fgsm_random_start


@pytest.mark.parametrize("fn, words", [
    (rs_todo, "still TODO"),
    (rs_plain_fgsm, "no random start"),
    (rs_descent, "you subtracted the gradient step"),
    (rs_no_step, "random start alone"),
    (rs_no_projection, "project delta back"),
    (rs_no_clip, "clip after the step"),
    (rs_fixed_seed, "draw the random start afresh"),
    (rs_gradient_at_x, "not at the random start"),
    (rs_tiny_step, "raises the loss from"),
    (rs_attached, "attached to the autograd graph"),
])
def test_fgsm_random_start_diagnoses_each_mistake(fn, words):
    with pytest.raises(check.ExerciseFailed, match=words):
        check.fgsm_random_start(fn)


def test_feedback_text():
    ok = check.Feedback("fgsm", True, "fine.")
    bad = check.Feedback("fgsm", False, "broken.")
    assert str(ok) == "✓ fgsm: fine." and str(bad) == "✗ fgsm: broken."
    assert issubclass(check.ExerciseFailed, AssertionError)
    assert np.isfinite(len(str(ok)))
