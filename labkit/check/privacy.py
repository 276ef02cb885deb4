"""Checks for the privacy labs (03, 03b): one DP-SGD step by hand, and epsilon from dp_accounting."""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from .common import TODO_MESSAGE, Feedback, digit_like_batch, fail, require_callable, snapshot
from .common import call as common_call
from .common import check_signature, reference_used, watch_for


def _dp_references():
    from .. import privacy

    return [(privacy.opacus_dp_gradient, "labkit.privacy.opacus_dp_gradient"),
            (privacy.opacus_per_sample_gradients, "labkit.privacy.opacus_per_sample_gradients")]


@functools.lru_cache(maxsize=1)
def _dp_bench_state():
    """A seeded TanhCNN and a batch of 48 digit-like images; max_grad_norm sits between the
    smallest and largest per-example gradient norms, so clipping changes some examples and not others."""
    from ..models import TanhCNN
    from ..privacy import opacus_per_sample_gradients

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        x, y = digit_like_batch(48)
        model = TanhCNN()
        model.eval()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        per_sample = opacus_per_sample_gradients(model, x, y)
    norms = torch.cat([g.flatten(1) for g in per_sample.values()], 1).norm(dim=1)
    clip = float(f"{norms.quantile(0.4).item():.2g}")
    for special in (1.0, len(x) ** 0.5):  # keep C away from 1 and sqrt(batch), so that each noise mistake differs
        if 0.85 * special < clip < 1.18 * special:
            clip = float(f"{norms.quantile(0.2 if clip > special else 0.6).item():.2g}")
    return state, x, y, clip


def _dp_bench():
    from ..models import TanhCNN

    state, x, y, clip = _dp_bench_state()
    model = TanhCNN()
    model.load_state_dict(state)
    model.eval()
    return model, x.clone(), y.clone(), clip


def _dp_as_named(exercise: str, out, model: nn.Module) -> dict:
    """The learner's gradient as {name: tensor}, checked against the model's parameters."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if out is None:
        fail(exercise, "your function returned None: return the noisy average gradient, a dict {name: tensor} "
              "with one entry per model parameter.")
    if isinstance(out, (list, tuple)):
        if len(out) != len(names):
            fail(exercise, f"you returned {len(out)} tensors but the model has {len(names)} parameters: return one "
                  "gradient per parameter (a dict {name: tensor} like dict(model.named_parameters())).")
        out = dict(zip(names, out))
    if not isinstance(out, dict):
        fail(exercise, f"return a dict {{name: gradient tensor}} (one per parameter), not a {type(out).__name__}.")
    missing = [n for n in names if n not in out]
    if missing:
        fail(exercise, f"no gradient for {', '.join(missing[:3])}: return one entry per name in "
              "dict(model.named_parameters()).")
    result = {}
    for n in names:
        g = out[n]
        if not isinstance(g, torch.Tensor):
            fail(exercise, f"the gradient for {n} is a {type(g).__name__}, not a torch tensor.")
        if tuple(g.shape) != shapes[n]:
            if g.dim() == len(shapes[n]) + 1 and tuple(g.shape[1:]) == shapes[n]:
                fail(exercise, f"the gradient for {n} still has a batch dimension {tuple(g.shape)}: sum the clipped "
                      "per-example gradients over the batch (dim 0), add the noise, then divide by the batch size.")
            fail(exercise, f"the gradient for {n} has shape {tuple(g.shape)} but the parameter has shape {shapes[n]}.")
        if torch.isnan(g).any() or torch.isinf(g).any():
            fail(exercise, f"the gradient for {n} contains NaN or inf: add a small constant to the norm before "
                  "dividing (max_grad_norm / (norm + 1e-6)).")
        result[n] = g.detach().double()
    return result


def _dp_flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.reshape(-1).double() for g in grads.values()])


def _dp_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-3) -> bool:
    return (a - b).norm().item() <= rtol * max(b.norm().item(), 1e-12)


NOT_CLIPPED = ("you did not clip each example's gradient: scale every example's gradient by min(1, C / its norm) "
               "before the sum (clipping the averaged gradient instead does not bound what ONE example contributes), "
               "otherwise one unusual patient can move the model as much as it likes.")
PER_TENSOR = ("you clipped each parameter tensor separately: flat clipping takes ONE norm over all the "
              "parameters of an example (concatenate every per-example gradient, then take the norm).")


def _diagnose_dp_clipping(per_sample: dict, clip: float, out: torch.Tensor) -> str:
    """Which common mistake in clip-and-average does `out` (flat, no noise) match?"""
    names = list(per_sample)
    b = len(next(iter(per_sample.values())))
    flat = torch.cat([per_sample[n].flatten(1).double() for n in names], 1)  # (B, P)
    norms = flat.norm(dim=1, keepdim=True)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    right = (factor * flat).sum(0) / b
    mean = flat.mean(0)
    candidates = [
        (mean, NOT_CLIPPED),
        (mean * min(1.0, clip / (mean.norm().item() + 1e-6)),
         "you clipped the averaged (batch) gradient, not each example's gradient: DP-SGD bounds what ONE example "
         "can contribute, so compute per-example gradients (vmap), clip each to norm C, then sum."),
        ((clip / (norms + 1e-6) * flat).sum(0) / b,
         "every example's gradient was rescaled to norm C, also the small ones: clipping only shrinks, "
         "factor = min(1, C / norm) (e.g. (C / (norm + 1e-6)).clamp(max=1.0))."),
        (right * b, "you summed the clipped gradients but did not divide by the batch size: the step uses the "
                    "average, (sum of clipped gradients + noise) / batch size."),
        (right / b, "you divided by the batch size twice (once in the loss, once after the sum?): compute each "
                    "example's loss on its own, sum the clipped gradients, and divide once."),
    ]
    per_layer = []
    for n in names:
        g = per_sample[n].flatten(1).double()
        f = (clip / (g.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
        per_layer.append((f * g).sum(0) / b)
    candidates.append((torch.cat(per_layer), PER_TENSOR))
    close = [((out - c).norm().item(), m) for c, m in candidates if _dp_close(out, c, 1e-3)]
    if close:
        return min(close)[1]  # the nearest, when two mistakes give almost the same numbers
    rel = (out - right).norm().item() / max(right.norm().item(), 1e-12)
    return (f"with noise_multiplier = 0 your gradient differs from Opacus' clipped average by {rel:.1%} (relative "
            "norm). Compute each example's gradient (vmap over grad of a one-example loss), the norm of each over all "
            "parameters, scale by min(1, C / norm), sum over the batch, and divide by the batch size.")


def dp_sgd_step(fn: Callable, noise_multiplier: float = 1.3) -> Feedback:
    """Check a learner's `fn(model, x, y, max_grad_norm, noise_multiplier, generator=None) -> {name: grad}`,
    the gradient one DP-SGD step uses, against Opacus (GradSampleModule per-example gradients and
    DPOptimizer's flat clipping, noise and averaging) on a fixed TanhCNN and batch.

    1. With noise_multiplier = 0 the result must equal Opacus' clipped average.
    2. With noise, (result - clipped average) must look like Gaussian noise of standard deviation
       noise_multiplier * max_grad_norm / batch size, fresh on every call."""
    from ..privacy import opacus_dp_gradient, opacus_per_sample_gradients

    exercise = "dp_sgd_step"
    require_callable(exercise, fn, "check.dp_sgd_step(dp_sgd_gradient)")

    def call(model, x, y, clip, sigma, generator):
        return common_call(exercise, fn, (model, x, y, clip, sigma, generator),
                           "dp_sgd_gradient(model, x, y, max_grad_norm, noise_multiplier, generator=None)",
                           _dp_references())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, x, y, clip = _dp_bench()
        b = len(x)
        x_before, params = x.clone(), snapshot(model)
        ours = _dp_as_named(exercise, call(model, x, y, clip, 0.0, torch.Generator().manual_seed(1)), model)
        for before, p in zip(params, model.parameters()):
            if not torch.equal(before, p.detach()):
                fail(exercise, "your function changed the model's weights: it should only compute the gradient "
                      "(the optimizer applies it later).")
        if not torch.equal(x, x_before):
            fail(exercise, "your function modified the input batch in place: work on copies.")
        reference = _dp_flat(opacus_dp_gradient(model, x, y, clip, 0.0))
        noiseless = _dp_flat(ours)
        again = _dp_flat(_dp_as_named(exercise, call(model, x, y, clip, 0.0, torch.Generator().manual_seed(2)), model))
        if not _dp_close(again, noiseless, 1e-6):
            fail(exercise, "with noise_multiplier = 0 your gradient still changes from call to call: the noise must "
                 "have standard deviation noise_multiplier * max_grad_norm (your noise ignores noise_multiplier), "
                 "added to the sum of clipped gradients before dividing by the batch size.")
        if not _dp_close(noiseless, reference, 1e-4):
            per_sample = opacus_per_sample_gradients(model, x, y)
            problem = _diagnose_dp_clipping(per_sample, clip, noiseless)
            if problem in (NOT_CLIPPED, PER_TENSOR):
                # On this bench every single parameter tensor's gradient is below C, so clipping each
                # tensor separately changes nothing; a smaller C tells the two mistakes apart.
                small = clip * 0.4
                probe = _dp_flat(_dp_as_named(exercise, call(model, x, y, small, 0.0, torch.Generator().manual_seed(1)),
                                              model))
                if _diagnose_dp_clipping(per_sample, small, probe) == PER_TENSOR:
                    problem, clip = PER_TENSOR, small
                else:
                    problem = NOT_CLIPPED
            fail(exercise, f"(max_grad_norm = {clip:g}, no noise) " + problem)

        g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)
        first = _dp_flat(_dp_as_named(exercise, call(model, x, y, clip, noise_multiplier, g1), model))
        second = _dp_flat(_dp_as_named(exercise, call(model, x, y, clip, noise_multiplier, g2), model))
        noise = first - reference
        expected = noise_multiplier * clip / b
        std, mean = noise.std().item(), noise.mean().item()
        ratio = std / expected
        if std <= 1e-4 * expected:
            fail(exercise, f"no noise was added (noise_multiplier = {noise_multiplier:g}): add Gaussian noise of "
                  "standard deviation noise_multiplier * max_grad_norm to the SUM of clipped gradients, then divide "
                  "by the batch size. Without noise, clipping alone gives no privacy guarantee.")
        if torch.equal(first, second):
            fail(exercise, "two calls with different generators gave the same noise: draw fresh noise on every call "
                  "(torch.normal(0.0, std, size=..., generator=generator)), never a fixed or cached tensor.")
        if abs(mean) > 0.2 * std + 5 * std / noise.numel() ** 0.5:
            fail(exercise, f"the noise has mean {mean:.3g}, not 0: use Gaussian noise centred on zero "
                  "(torch.normal(0.0, std, ...) or torch.randn(...) * std), not torch.rand.")
        if abs(ratio - 1) > 0.05:
            if abs(ratio - 1 / clip) < 0.05 / clip:
                hint = ("your noise has standard deviation noise_multiplier / batch size: scale it by max_grad_norm "
                        "too. The sensitivity of the clipped sum is C, so the noise must be sigma * C.")
            elif abs(ratio - b) < 0.05 * b:
                hint = ("your noise was not divided by the batch size: add noise of std sigma * C to the SUM of "
                        "clipped gradients and divide the total by the batch size (or add sigma * C / B after averaging).")
            elif abs(ratio - b / clip) < 0.05 * b / clip:
                hint = ("your noise has standard deviation noise_multiplier (not sigma * C) and was not divided by the "
                        "batch size: add N(0, (sigma * C)^2) to the sum, then divide everything by the batch size.")
            elif abs(ratio - b ** 0.5) < 0.05 * b ** 0.5:
                hint = ("you added noise to every example's gradient: add ONE noise draw of std sigma * C to the sum "
                        "of clipped gradients (per-example noise is sqrt(B) times too large after averaging).")
            else:
                hint = (f"expected std sigma * C / B = {noise_multiplier:g} * {clip:g} / {b} = {expected:.3g}; "
                        "add N(0, (sigma * C)^2) to the sum of clipped gradients, then divide by the batch size.")
            fail(exercise, f"(max_grad_norm = {clip:g}, noise_multiplier = {noise_multiplier:g}, batch {b}) the noise "
                  f"on your gradient has standard deviation {std:.3g} = {ratio:.3g} x the right one. " + hint)
        exact = _dp_close(first, _dp_flat(opacus_dp_gradient(model, x, y, clip, noise_multiplier,
                                                         torch.Generator().manual_seed(11))), 1e-6)
    message = (f"matches Opacus' per-example clipping and averaging (max_grad_norm {clip:g}, batch {b}), and the noise "
               f"has standard deviation {std:.3g} = {ratio:.3f} x sigma * C / B"
               + (", bit for bit the same noise as Opacus with the same generator." if exact else "."))
    return Feedback(exercise, True, message, {"max_grad_norm": clip, "noise_ratio": ratio, "same_as_opacus": exact}).show()


# (n, batch_size, epochs, noise_multiplier, delta, num_microbatches): per-example clipping, the TF
# Privacy tutorial's 25 microbatches of 10, and a small data set over two epochs.
DP_SGD_EPSILON_CASES = (
    (60_000, 512, 1, 0.7, 1e-5, 512),
    (60_000, 250, 1, 1.1, 1e-5, 25),
    (10_000, 128, 2, 1.0, 1e-4, 128),
)


def dp_sgd_epsilon(fn: Callable, rtol: float = 0.01) -> Feedback:
    """Check a learner's `fn(n, batch_size, epochs, noise_multiplier, delta, num_microbatches) -> epsilon`
    (Poisson-sampled DP-SGD, RDP accounting, microbatch sensitivity) against dp_accounting."""
    import math

    import dp_accounting

    from ..privacy_tf import dp_sgd_epsilon as reference

    exercise = "dp_sgd_epsilon"
    if not callable(fn):
        fail(exercise, f"pass your function itself, e.g. check.{exercise}({exercise}), not a {type(fn).__name__}.")

    def rdp(event, delta):
        return float(dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta))

    def variant(n, b, e, sigma, delta, q=None, steps=None):
        q = b / n if q is None else q
        steps = math.ceil(e * n / b) if steps is None else steps
        return rdp(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps), delta)

    check_signature(exercise, fn, DP_SGD_EPSILON_CASES[0],
                    "dp_sgd_epsilon(n, batch_size, epochs, noise_multiplier, delta, num_microbatches)")
    results = []
    for n, b, e, sigma, delta, m in DP_SGD_EPSILON_CASES:
        where = f"(n={n}, batch_size={b}, epochs={e}, noise_multiplier={sigma}, delta={delta}, num_microbatches={m})"
        watch = watch_for([(reference, "labkit.privacy_tf.dp_sgd_epsilon")])
        try:
            with watch:
                got = fn(n, b, e, sigma, delta, m)
        except NotImplementedError as err:
            fail(exercise, TODO_MESSAGE, err)
        except Exception as err:  # noqa: BLE001 - any learner error becomes feedback
            fail(exercise, f"your function raised {type(err).__name__}: {err} {where}", err)
        if watch.hit:
            reference_used(exercise, watch.hit)
        if got is None:
            fail(exercise, "your function returned None: return the epsilon as a float.")
        if isinstance(got, (tuple, list)):
            fail(exercise, "return only epsilon (a float), not a tuple: get_epsilon(delta) gives it directly.")
        try:
            got = float(got)
        except (TypeError, ValueError) as err:
            fail(exercise, f"return epsilon as a number, not a {type(got).__name__}.", err)
        want = reference(n, b, e, sigma, delta, m)
        results.append((where, got, want))
        if abs(got - want) <= rtol * want:
            continue
        micro = b // m > 1
        close = lambda value: abs(got - value) <= rtol * value  # noqa: E731
        if micro and close(variant(n, b, e, sigma, delta)):
            fail(exercise, f"{where}: you got {got:.3f}, the epsilon without microbatching, but TF Privacy's "
                  f"answer is {want:.3f}. With microbatches of {b // m} examples one example can change a "
                  "microbatch's clipped gradient by up to 2C, so the sensitivity doubles: account with "
                  "noise_multiplier / 2 when batch_size // num_microbatches > 1.")
        if not micro and close(variant(n, b, e, sigma / 2, delta)):
            fail(exercise, f"{where}: you got {got:.3f}, but with one example per microbatch the sensitivity is "
                  f"C, not 2C ({want:.3f}): halve the noise multiplier only when microbatches hold more than "
                  "one example.")
        for wrong_q, why in ((m / n, "num_microbatches / n"), (1 / m, "1 / num_microbatches")):
            for s in (sigma, sigma / 2):
                if close(variant(n, b, e, s, delta, q=wrong_q)):
                    fail(exercise, f"{where}: your sampling rate looks like {why}; each example is sampled with "
                          "probability q = batch_size / n, whatever the microbatching.")
        sigma_eff = sigma / 2 if micro else sigma
        for wrong_steps, why in ((e, "epochs"), (math.ceil(n / b), "one epoch's steps"),
                                 (math.ceil(e * n / m), "epochs * n / num_microbatches")):
            if wrong_steps != math.ceil(e * n / b) and close(variant(n, b, e, sigma_eff, delta, steps=wrong_steps)):
                fail(exercise, f"{where}: your number of steps looks like {why}; DP-SGD takes "
                      "ceil(epochs * n / batch_size) steps, one Poisson-sampled Gaussian event each.")
        no_sampling = rdp(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma_eff),
                                                            math.ceil(e * n / b)), delta)
        if close(no_sampling):
            fail(exercise, f"{where}: you composed plain Gaussian events; wrap each step in "
                  "dp_accounting.PoissonSampledDpEvent(batch_size / n, ...) so that sampling amplifies privacy.")
        pld = float(dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3).compose(
            dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
                b / n, dp_accounting.GaussianDpEvent(sigma_eff)), math.ceil(e * n / b))).get_epsilon(delta))
        if abs(got - pld) <= 0.03 * pld:
            fail(exercise, f"{where}: you got {got:.3f}, which looks like the PLD accountant; this exercise "
                  f"compares with TF Privacy's RDP figure ({want:.3f}): use dp_accounting.rdp.RdpAccountant().")
        fail(exercise, f"{where}: you got {got:.3f}, dp_accounting's RDP accountant gives {want:.3f}. Build "
              "SelfComposedDpEvent(PoissonSampledDpEvent(batch_size / n, GaussianDpEvent(sigma)), "
              "ceil(epochs * n / batch_size)) with sigma halved for microbatches of more than one example, "
              "then RdpAccountant().compose(event).get_epsilon(delta).")
    message = "matches dp_accounting's RDP epsilon on all cases: " + "; ".join(
        f"{got:.3f} vs {want:.3f}" for _, got, want in results) + " (per example, 25 microbatches, small data)."
    return Feedback(exercise, True, message, {"results": results}).show()
