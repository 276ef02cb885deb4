"""labkit.check.dp_sgd_step: a correct DP-SGD step passes; each classic mistake gets its own diagnosis."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from labkit import check


def _per_sample(model, x, y):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)


def _factor(per_sample, clip):
    norms = torch.cat([g.flatten(1) for g in per_sample.values()], 1).norm(dim=1)
    return (clip / (norms + 1e-6)).clamp(max=1.0)


def _noise(shape, std, generator):
    return torch.normal(0.0, std, size=shape, generator=generator)


def make(clip_mode="flat", noise_mode="right", divide=1):
    def fn(model, x, y, max_grad_norm, noise_multiplier, generator=None):
        per_sample = _per_sample(model, x, y)
        b = len(x)
        if clip_mode == "flat":
            f = _factor(per_sample, max_grad_norm)
        elif clip_mode == "always":
            norms = torch.cat([g.flatten(1) for g in per_sample.values()], 1).norm(dim=1)
            f = max_grad_norm / (norms + 1e-6)
        else:
            f = torch.ones(b)
        out = {}
        for name, g in per_sample.items():
            if clip_mode == "per_layer":
                f = (max_grad_norm / (g.flatten(1).norm(dim=1) + 1e-6)).clamp(max=1.0)
            summed = torch.einsum("b,b...->...", f, g)
            if clip_mode == "batch":
                summed = g.mean(0) * b
            if noise_mode == "right":
                summed = summed + _noise(summed.shape, noise_multiplier * max_grad_norm, generator)
            elif noise_mode == "no_sigma":
                summed = summed + _noise(summed.shape, max_grad_norm, generator)
            elif noise_mode == "sigma_only":
                summed = summed + _noise(summed.shape, noise_multiplier, generator)
            elif noise_mode == "per_example":
                summed = summed + _noise((b,) + tuple(summed.shape), noise_multiplier * max_grad_norm, generator).sum(0)
            elif noise_mode == "uniform":
                summed = summed + torch.rand(summed.shape, generator=generator) * noise_multiplier * max_grad_norm
            elif noise_mode == "fixed":
                summed = summed + _noise(summed.shape, noise_multiplier * max_grad_norm, torch.Generator().manual_seed(0))
            out[name] = summed / (b ** divide) if divide else summed
            if noise_mode == "after_mean":
                out[name] = out[name] + _noise(summed.shape, noise_multiplier * max_grad_norm, generator)
        if clip_mode == "batch":  # clip the averaged gradient as a whole
            total = torch.cat([v.flatten() for v in out.values()])
            noiseless = {k: v for k, v in out.items()}
            scale = min(1.0, max_grad_norm / (total.norm().item() + 1e-6)) if noise_multiplier == 0 else 1.0
            out = {k: v * scale for k, v in noiseless.items()}
        return out

    return fn


def test_correct_step_passes_and_matches_opacus_noise_bit_for_bit():
    feedback = check.dp_sgd_step(make())
    assert feedback.passed and feedback.details["same_as_opacus"]
    assert abs(feedback.details["noise_ratio"] - 1) < 0.05


def test_a_list_in_parameter_order_is_accepted():
    good = make()
    check.dp_sgd_step(lambda *a: list(good(*a).values()))


@pytest.mark.parametrize("fn, phrase", [
    (make(clip_mode="none"), "you did not clip each example"),
    (make(clip_mode="batch", noise_mode="none"), "did not clip each example"),
    (make(clip_mode="always"), "clipping only shrinks"),
    (make(divide=0), "did not divide by the batch size"),
    (make(divide=2), "divided by the batch size twice"),
    (make(clip_mode="per_layer"), "clipped each parameter tensor separately"),
    (make(noise_mode="no_sigma"), "ignores noise_multiplier"),
    (make(noise_mode="none"), "no noise was added"),
    (make(noise_mode="sigma_only"), "scale it by max_grad_norm"),
    (make(noise_mode="after_mean"), "not divided by the batch size"),
    (make(noise_mode="per_example"), "added noise to every example"),
    (make(noise_mode="uniform"), r"not torch\.rand"),
    (make(noise_mode="fixed"), "draw fresh noise"),
])
def test_each_mistake_gets_its_diagnosis(fn, phrase):
    with pytest.raises(check.ExerciseFailed) as err:
        check.dp_sgd_step(fn)
    assert re.search(phrase, str(err.value))


def test_todo_wrong_shape_and_wrong_type_are_explained():
    def todo(*args):
        raise NotImplementedError("TODO")

    with pytest.raises(check.ExerciseFailed, match="still TODO"):
        check.dp_sgd_step(todo)
    with pytest.raises(check.ExerciseFailed, match="batch dimension"):
        check.dp_sgd_step(lambda model, x, y, c, s, g=None: _per_sample(model, x, y))
    with pytest.raises(check.ExerciseFailed, match="return a dict"):
        check.dp_sgd_step(lambda *a: 1.0)
    with pytest.raises(check.ExerciseFailed, match="signature"):
        check.dp_sgd_step(lambda model, x, y: None)


def test_the_check_leaves_the_global_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check.dp_sgd_step(make())
    assert torch.equal(torch.rand(3), expected)


def test_per_layer_clipping_and_sigma_free_noise_are_not_called_missing_clipping():
    for fn in (make(clip_mode="per_layer"), make(noise_mode="no_sigma")):
        with pytest.raises(check.ExerciseFailed) as err:
            check.dp_sgd_step(fn)
        assert "did not clip each example" not in str(err.value)


def test_calling_the_kits_own_step_is_named():
    from labkit import privacy

    def reference(model, x, y, max_grad_norm, noise_multiplier, generator=None):
        return privacy.opacus_dp_gradient(model, x, y, max_grad_norm, noise_multiplier, generator)

    with pytest.raises(check.ExerciseFailed, match="kit's own answer"):
        check.dp_sgd_step(reference)
