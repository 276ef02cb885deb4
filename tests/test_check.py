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


def fgsm_hard_coded_small(model, x, y, eps):
    return fgsm_good(model, x, y, 0.05)


def fgsm_double_eps(model, x, y, eps):
    return fgsm_good(model, x, y, 2 * eps)


def fgsm_returns_perturbation(model, x, y, eps):
    x, g = _grad(model, x, y)
    return eps * g.sign()


def fgsm_calls_reference(model, x, y, eps):
    from labkit import attacks

    return attacks.fgsm_reference(model, x, eps, y=y)


from labkit.attacks import fgsm_reference as _imported_reference  # noqa: E402 - the way a learner may import it


def fgsm_calls_reference_imported(model, x, y, eps):
    return _imported_reference(model, x, eps, y=y)


def fgsm_calls_cleverhans(model, x, y, eps):
    from cleverhans.torch.attacks.fast_gradient_method import fast_gradient_method

    return fast_gradient_method(model, x, eps, float("inf"), clip_min=0.0, clip_max=1.0, y=y)


def fgsm_wrong_signature(model, x, eps):
    return fgsm_good(model, x, None, eps)


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
    (fgsm_hard_coded, "whatever eps was"),
    (fgsm_hard_coded_small, "you used a fixed number"),
    (fgsm_too_small, r"0\.25 x eps"),
    (fgsm_double_eps, r"2 x eps"),
    (fgsm_returns_perturbation, "returned the perturbation"),
    (fgsm_calls_reference, "the kit's own answer"),
    (fgsm_calls_reference_imported, r"labkit\.attacks\.fgsm_reference"),
    (fgsm_calls_cleverhans, "cleverhans' fast_gradient_method"),
    (fgsm_wrong_signature, "signature"),
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


def rs_gaussian_start(model, x, y, eps, alpha):
    delta = (torch.randn_like(x) * eps).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
    return (x + (delta.detach() + alpha * g.sign()).clamp(-eps, eps)).clamp(0, 1)


def rs_clipped_gaussian_start(model, x, y, eps, alpha):
    delta = (torch.randn_like(x) * eps).clamp(-eps, eps).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
    return (x + (delta.detach() + alpha * g.sign()).clamp(-eps, eps)).clamp(0, 1)


def rs_positive_start(model, x, y, eps, alpha):
    delta = (torch.rand_like(x) * eps).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
    return (x + (delta.detach() + alpha * g.sign()).clamp(-eps, eps)).clamp(0, 1)


def rs_step_eps(model, x, y, eps, alpha):
    return rs_good(model, x, y, eps, eps)


def rs_no_sign(model, x, y, eps, alpha):
    delta = torch.empty_like(x).uniform_(-eps, eps).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
    return (x + (delta.detach() + alpha * g).clamp(-eps, eps)).clamp(0, 1)


def rs_reference(model, x, y, eps, alpha):
    from labkit import attacks

    return attacks.fgsm_random_start(model, x, y, eps, alpha)


def rs_returns_perturbation(model, x, y, eps, alpha):
    return rs_good(model, x, y, eps, alpha) - x


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
    (rs_tiny_step, r"stepped by 0\.094, but alpha is 0\.375"),
    (rs_attached, "attached to the autograd graph"),
    (rs_gaussian_start, "Gaussian start"),
    (rs_clipped_gaussian_start, "not uniform on"),
    (rs_positive_start, r"only goes up"),
    (rs_step_eps, r"your step was eps \(0\.3\) instead of alpha"),
    (rs_no_sign, "gradient itself instead of its sign"),
    (rs_reference, r"kit's own answer \(labkit\.attacks\.fgsm_random_start\)"),
    (rs_returns_perturbation, "returned the perturbation"),
])
def test_fgsm_random_start_diagnoses_each_mistake(fn, words):
    with pytest.raises(check.ExerciseFailed, match=words) as info:
        check.fgsm_random_start(fn)
    if fn is rs_no_step:  # the sign-less step must not be taken for "no step at all"
        assert "instead of its sign" not in str(info.value)


def test_rs_without_sign_is_not_called_the_random_start_alone():
    with pytest.raises(check.ExerciseFailed) as info:
        check.fgsm_random_start(rs_no_sign)
    assert "random start alone" not in str(info.value)


def test_the_todo_sentence_is_the_same_everywhere():
    from labkit.check.common import TODO_MESSAGE

    with pytest.raises(check.ExerciseFailed) as a:
        check.fgsm(fgsm_todo)
    with pytest.raises(check.ExerciseFailed) as b:
        check.fgsm_random_start(rs_todo)
    assert TODO_MESSAGE in str(a.value) and TODO_MESSAGE in str(b.value)


def test_feedback_text():
    ok = check.Feedback("fgsm", True, "fine.")
    bad = check.Feedback("fgsm", False, "broken.")
    assert str(ok) == "✓ fgsm: fine." and str(bad) == "✗ fgsm: broken."
    assert issubclass(check.ExerciseFailed, AssertionError)
    assert np.isfinite(len(str(ok)))


# --- the training loop's perturbation (lab 01): eps from the ramp, alpha = alpha_ratio * eps ------

from labkit.train import Ramp  # noqa: E402


def _perturbs(ramp, ratio=1.25):
    def good(model, x, y):
        eps = ramp()
        return rs_good(model, x, y, eps, ratio * eps)

    def fixed_eps(model, x, y):
        return rs_good(model, x, y, 0.3, ratio * 0.3)

    def ramp_twice(model, x, y):
        return rs_good(model, x, y, ramp(), ratio * ramp())

    def alpha_is_ratio(model, x, y):
        eps = ramp()
        return rs_good(model, x, y, eps, ratio)

    def alpha_is_eps(model, x, y):
        eps = ramp()
        return rs_good(model, x, y, eps, eps)

    def clean(model, x, y):
        ramp()
        return x

    def plain_fgsm(model, x, y):
        return fgsm_good(model, x, y, ramp())

    def reference(model, x, y):
        from labkit import attacks

        eps = ramp()
        return attacks.fgsm_random_start(model, x, y, eps, ratio * eps)

    def todo(model, x, y):
        raise NotImplementedError("TODO: eps from the ramp")

    return dict(good=good, fixed_eps=fixed_eps, ramp_twice=ramp_twice, alpha_is_ratio=alpha_is_ratio,
                alpha_is_eps=alpha_is_eps, clean=clean, plain_fgsm=plain_fgsm, reference=reference, todo=todo)


def test_perturb_accepts_a_correct_answer_and_leaves_the_ramp_alone(capsys):
    ramp = Ramp(end=0.3, steps=40)
    ramp()
    ramp()
    feedback = check.perturb(_perturbs(ramp)["good"], ramp, 1.25)
    assert feedback.passed and abs(feedback.details["eps"] - 0.3 * 21 / 40) < 1e-9
    assert ramp.calls == 2  # the training run starts where it would have without the check
    assert "✓ perturb" in capsys.readouterr().out


@pytest.mark.parametrize("name, words", [
    ("fixed_eps", "never called eps_now"),
    ("ramp_twice", "called eps_now\\(\\) 2 times"),
    ("alpha_is_ratio", "far larger than alpha"),
    ("alpha_is_eps", "instead of alpha"),
    ("clean", "returned the clean batch"),
    ("plain_fgsm", "no random start"),
    ("reference", "kit's own answer"),
    ("todo", "still TODO"),
])
def test_perturb_diagnoses_each_mistake(name, words):
    ramp = Ramp(end=0.3, steps=40)
    with pytest.raises(check.ExerciseFailed, match=words):
        check.perturb(_perturbs(ramp)[name], ramp, 1.25)
    assert ramp.calls == 0


def test_perturb_needs_the_ramp():
    with pytest.raises(check.ExerciseFailed, match="pass the notebook's epsilon ramp"):
        check.perturb(lambda model, x, y: x, 0.3)
