"""Checks for the Keras evasion lab (01b): FGSM and FGSM from a random start with tf.GradientTape.

The bench is a seeded Keras CNN (`keras_models.small_cnn`) fitted briefly to the same digit-like
batch as the PyTorch checks, channels last. Each learner function runs on tensors (tf.constant, not
tf.Variable, so a forgotten `tape.watch` shows), and its result is compared with cleverhans'
`cleverhans.tf2` fast gradient method (logits in) or with the FGSM-RS step taken from the random
start the learner drew (the bench model records its inputs). The typical mistakes each get their
own sentence: no clipping to [0, 1], the gradient instead of its sign, a step down the loss, the
logits fed to a loss that expects probabilities (or a softmax fed to one that expects logits), a
step that is not eps, no random start, no projection.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from .common import ATOL, ExerciseFailed, Feedback, TODO_MESSAGE, call, check_signature, digit_like_batch, fail

_SEED = 1234


def _tf():
    from ..keras_models import _keras

    _keras()  # TensorFlow with Keras 3, or a clear error
    import tensorflow as tf

    return tf


@functools.lru_cache(maxsize=1)
def _bench_weights():
    """Weights of the bench CNN after 25 Adam steps on 48 of 64 digit-like images (seeded; the
    caller's torch, numpy and TensorFlow random numbers are left alone)."""
    import torch

    from ..keras_models import small_cnn

    tf = _tf()
    import keras

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        x, y = digit_like_batch(64)
    x = np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))  # NCHW -> NHWC
    y = y.numpy().astype(np.int64)
    model = small_cnn(seed=_SEED, name="bench")
    opt = keras.optimizers.Adam(1e-3)
    xs, ys = tf.constant(x[:48]), tf.constant(y[:48])
    for _ in range(25):  # a confident model makes directions obvious; the 16 unseen images give some errors
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(ys, model(xs, training=True)))
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    return [w.copy() for w in model.get_weights()], x, y


class Recorder:
    """A Keras model that keeps a copy of every input it is called on (so the check sees the random
    start the learner drew). Calls pass through to the bench model."""

    def __init__(self, inner):
        self.inner = inner
        self.inputs: list[np.ndarray] = []

    def __call__(self, x, *args, **kwargs):
        self.inputs.append(np.array(x, dtype=np.float32, copy=True))
        return self.inner(x, *args, **kwargs)

    def __getattr__(self, name):  # trainable_variables, input_shape, predict ... of the inner model
        return getattr(self.inner, name)


def bench():
    """A fresh bench model (weights copied, so learners cannot spoil it), images (N, 28, 28, 1) as a
    tf.constant in [0, 1], integer labels as a tf.constant."""
    from ..keras_models import small_cnn

    tf = _tf()
    weights, x, y = _bench_weights()
    model = small_cnn(seed=_SEED, name="bench")
    model.set_weights(weights)
    return model, tf.constant(x), tf.constant(y)


# ---- what the checks compute on the bench -----------------------------------------------------

def _ce(logits, y, probabilities: bool = False):
    tf = _tf()
    import keras

    if probabilities:  # the logits handed to a loss that expects probabilities (from_logits=False)
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=False))
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int64), logits))


def input_grad(model, x, y, loss: str = "logits") -> np.ndarray:
    """Gradient of the mean cross-entropy with respect to the input. loss="probabilities": Keras'
    loss with from_logits=False on the logits; "double_softmax": softmax, then a loss from logits."""
    tf = _tf()
    x = tf.constant(np.asarray(x, np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        if loss == "probabilities":
            value = _ce(logits, y, probabilities=True)
        elif loss == "double_softmax":
            value = _ce(tf.nn.softmax(logits), y)
        else:
            value = _ce(logits, y)
    return np.asarray(tape.gradient(value, x))


def loss_of(model, x, y) -> float:
    return float(_ce(model(np.asarray(x, np.float32), training=False), y))


def agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(np.asarray(a) - np.asarray(b)) <= ATOL).mean())


def _fgsm(x, grad, eps):
    return np.clip(x + eps * np.sign(grad), 0, 1)


# ---- calling the learner's function ------------------------------------------------------------

def _run(exercise: str, fn: Callable, args: tuple, expected: str, references) -> object:
    """common.call with the TensorFlow errors a learner meets translated into advice."""
    check_signature(exercise, fn, args, expected)

    @functools.wraps(fn)
    def guarded(*a):
        try:
            return fn(*a)
        except (NotImplementedError, ExerciseFailed):
            raise
        except (ValueError, TypeError, AttributeError) as e:
            text = str(e)
            if "None" in text or "NoneType" in text:
                fail(exercise, "tape.gradient returned None, so there was no gradient to step along: the tape did "
                     "not connect the loss to the tensor you asked about. Images are tensors, not tf.Variables, so "
                     "the tape follows them only after tape.watch(...): inside `with tf.GradientTape() as tape:` "
                     "watch the tensor first (x, or delta for a random start), then compute the loss from that very "
                     "tensor (model(x + delta) for a random start) inside the block.", e)
            raise

    guarded.__signature__ = None  # check_signature already ran on fn itself
    try:
        return call(exercise, guarded, args, expected, references)
    except ExerciseFailed:
        raise


def _as_images(exercise: str, out, x: np.ndarray) -> np.ndarray:
    tf = _tf()
    if out is None:
        fail(exercise, "your function returned None: did you forget `return x_adv`?")
    if isinstance(out, (tuple, list)):
        fail(exercise, f"return only the adversarial images, not a {type(out).__name__} of {len(out)} items.")
    if not isinstance(out, (tf.Tensor, tf.Variable, np.ndarray)):
        fail(exercise, f"return a tensor (or numpy array) of images, not a {type(out).__name__}.")
    arr = np.asarray(out)
    if arr.shape != x.shape:
        fail(exercise, f"x_adv has shape {arr.shape} but x has shape {x.shape}: return one adversarial image per "
             "input image, shaped like x (check for a stray squeeze, reshape or argmax).")
    if not np.issubdtype(arr.dtype, np.floating):
        fail(exercise, f"x_adv has dtype {arr.dtype}: return float images in [0, 1] like x (float32).")
    if np.isnan(arr).any():
        fail(exercise, "x_adv contains NaN values: check the gradient computation.")
    return arr.astype(np.float32)


def _side_effects(exercise: str, model, weights_before) -> None:
    for before, after in zip(weights_before, model.get_weights()):
        if not np.array_equal(before, after):
            fail(exercise, "your function changed the model's weights: an attack takes the gradient with respect to "
                 "the input only; do not call optimizer.apply or assign to the model's variables.")


def _range(exercise: str, out: np.ndarray, eps: float) -> None:
    low, high = float(out.min()), float(out.max())
    if low < -ATOL or high > 1 + ATOL:
        if low >= -eps - ATOL and high <= eps + ATOL:
            fail(exercise, f"you returned the perturbation (its values lie in [-{eps:g}, {eps:g}]) instead of the "
                 "adversarial image: return x + the perturbation, clipped to [0, 1].")
        fail(exercise, f"your step moves pixels outside [0, 1] (they range from {low:.3f} to {high:.3f}): images "
             "only have valid pixels in [0, 1], so clip after the step: tf.clip_by_value(x_adv, 0.0, 1.0).")


def _uniform_size(step: np.ndarray) -> float | None:
    """The one size (almost) every moved pixel moved by, or None when the sizes vary."""
    size = np.abs(step[np.abs(step) > ATOL])
    if size.size == 0:
        return None
    median = float(np.median(size))
    return median if (np.abs(size - median) <= 0.01 * median + 1e-6).mean() > 0.9 else None


# ---------------------------------------------------------------------------------------------
# Exercise: FGSM with tf.GradientTape
# ---------------------------------------------------------------------------------------------

def _fgsm_references():
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

    from .. import attacks_tf

    return [(attacks_tf.fgsm_reference, "labkit.attacks_tf.fgsm_reference"),
            (fast_gradient_method, "cleverhans' fast_gradient_method"),
            (attacks_tf.fgsm_random_start, "labkit.attacks_tf.fgsm_random_start"),
            (attacks_tf.pgd_cleverhans, "labkit.attacks_tf.pgd_cleverhans")]


def _diagnose_fgsm(model, x: np.ndarray, y: np.ndarray, eps: float, out: np.ndarray) -> str | None:
    """None when `out` is FGSM (cleverhans agrees on the pixels); else what is different."""
    from ..attacks_tf import fgsm_reference

    reference = np.asarray(fgsm_reference(model, x, eps, y=y))
    if agree(out, reference) >= 0.999:
        return None
    delta = out - x
    free = (out > ATOL) & (out < 1 - ATOL)  # pixels the [0, 1] clip did not touch
    grad = input_grad(model, x, y)
    if agree(out, _fgsm(x, -grad, eps)) >= 0.99:
        return ("you stepped down the loss (gradient descent): x - eps * sign(grad) makes the model more sure of "
                "the right answer. An attack climbs the loss: x + eps * tf.sign(grad).")
    for kind, words in (("probabilities", "your model returns logits, but your loss treated them as probabilities "
                         "(a Keras loss with from_logits=False, the default): use "
                         "keras.losses.SparseCategoricalCrossentropy(from_logits=True), or "
                         "tf.nn.sparse_softmax_cross_entropy_with_logits."),
                        ("double_softmax", "you applied a softmax to the logits and then used a loss that expects "
                         "logits (a softmax twice): pass the logits themselves to the loss with from_logits=True.")):
        if agree(out, _fgsm(x, input_grad(model, x, y, kind), eps)) >= 0.99:
            return words
    predicted = np.asarray(model(x, training=False)).argmax(1)
    if (predicted != y).any() and agree(out, np.asarray(fgsm_reference(model, x, eps, y=predicted))) >= 0.999:
        return "you attacked the model's predicted labels; this exercise gives you the true labels y: use them in the loss."
    size = _uniform_size(np.where(free, delta, 0))
    if size is not None and abs(size - eps) > 1e-4:
        return (f"every moved pixel moved by {size:.3f}, but eps is {eps:g}: a fixed number or an extra factor in the "
                "step. FGSM moves each pixel by exactly eps: x + eps * tf.sign(grad).")
    moved = free & (np.abs(delta) > ATOL) & (grad != 0)
    if moved.any():
        at_eps = float((np.abs(np.abs(delta[moved]) - eps) <= 1e-4).mean())
        same_sign = float((np.sign(delta[moved]) == np.sign(grad[moved])).mean())
        if at_eps < 0.5 and same_sign > 0.9:
            return ("you stepped along the gradient itself instead of its sign: FGSM moves every pixel by exactly "
                    "eps in the direction of the gradient's sign, x + eps * tf.sign(grad).")
        if at_eps < 0.5 and same_sign < 0.1:
            return ("you stepped against the gradient and used its values instead of its sign: FGSM is "
                    "x + eps * tf.sign(grad).")
    biggest = float(np.abs(delta).max())
    if biggest < 0.9 * eps:
        return (f"the largest pixel change is {biggest:.3f} but eps is {eps:g}: FGSM moves each pixel by exactly "
                "eps, eps * tf.sign(grad).")
    clean, adv = loss_of(model, x, y), loss_of(model, out, y)
    if adv <= clean:
        return (f"the loss did not go up (clean {clean:.3f}, yours {adv:.3f}): FGSM must increase the cross-entropy "
                "of the true labels, x + eps * tf.sign(grad).")
    return (f"your x_adv differs from cleverhans' FGSM on {100 * (1 - agree(out, reference)):.1f}% of the pixels: "
            "compute the cross-entropy of model(x) (logits) against y inside a GradientTape that watches x, take "
            "tape.gradient(loss, x), step eps * tf.sign(grad), then clip to [0, 1].")


def _eps_scale_problem(runs) -> str | None:
    """runs: [(eps, x, out)]. Every moved pixel moved by one size that ignores eps or scales it wrongly."""
    sizes = [(eps, _uniform_size(np.where((out > ATOL) & (out < 1 - ATOL), out - x, 0))) for eps, x, out in runs]
    biggest = [(eps, float(np.abs(out - x).max())) for eps, x, out in runs]
    if all(b > 0.5 + eps for eps, b in biggest) or all(s is not None and abs(s - 1) <= 1e-3 for _, s in sizes):
        return ("every pixel jumped by up to 1 (the sign alone, not scaled): you forgot eps. The step is "
                "eps * tf.sign(grad), so no pixel moves by more than eps.")
    if any(s is None or abs(s - eps) <= 1e-4 for eps, s in sizes):
        return None
    shown = ", ".join(f"{s:.3f} at eps = {eps:g}" for eps, s in sizes)
    if max(s for _, s in sizes) - min(s for _, s in sizes) <= 1e-4:
        return (f"every pixel moved by {sizes[0][1]:.3f} whatever eps was ({shown}): you used a fixed number; use "
                "the eps argument, x + eps * tf.sign(grad).")
    ratios = [s / eps for eps, s in sizes]
    if max(ratios) - min(ratios) <= 1e-3 * max(ratios):
        return (f"every pixel moved by {ratios[0]:.3g} x eps ({shown}): an extra factor in the step. FGSM moves each "
                "pixel by exactly eps: x + eps * tf.sign(grad).")
    return (f"every pixel moved by one size that is not eps ({shown}): FGSM moves each pixel by exactly eps, "
            "x + eps * tf.sign(grad).")


def fgsm_tf(fn: Callable, eps_values: tuple[float, ...] = (0.2, 0.1)) -> Feedback:
    """Check a learner's `fn(model, x, y, eps) -> x_adv` (TensorFlow: x a float tensor (N, 28, 28, 1)
    in [0, 1], y integer labels, the model returns logits) against cleverhans' tf2 FGSM, for each eps."""
    exercise = "fgsm_tf"
    runs = []
    for i, eps in enumerate(eps_values):
        model, x, y = bench()
        if i:
            x, y = x[::-1], y[::-1]  # a different batch order: catches a cached answer
        weights = model.get_weights()
        out = _run(exercise, fn, (model, x, y, eps), "fgsm(model, x, y, eps)", _fgsm_references())
        x_np, y_np = np.asarray(x), np.asarray(y)
        out = _as_images(exercise, out, x_np)
        _side_effects(exercise, model, weights)
        if out.min() < -ATOL and np.abs(out).max() <= eps + ATOL:
            fail(exercise, f"you returned the perturbation (its values lie in [-{eps:g}, {eps:g}]) instead of the "
                 "adversarial image: return x + the perturbation, clipped to [0, 1].")
        runs.append((model, x_np, y_np, eps, out))
    problem = _eps_scale_problem([(eps, x, out) for _, x, _, eps, out in runs])
    if problem:
        fail(exercise, problem)
    for model, x, y, eps, out in runs:
        grad = input_grad(model, x, y)
        # an unclipped FGSM: the most common slip, named before the range check's general sentence
        if (out.min() < -ATOL or out.max() > 1 + ATOL) and agree(out, x + eps * np.sign(grad)) >= 0.99:
            fail(exercise, f"(eps = {eps:g}) your FGSM is right but not clipped: pixels now range from "
                 f"{out.min():.3f} to {out.max():.3f}, outside the valid [0, 1]. Clip after the step: "
                 "tf.clip_by_value(x + eps * tf.sign(grad), 0.0, 1.0).")
        problem = _diagnose_fgsm(model, x, y, eps, out)
        if problem is None:
            continue
        _range(exercise, out, eps)
        biggest = float(np.abs(out - x).max())
        if biggest > eps + ATOL:
            fail(exercise, f"(eps = {eps:g}) your perturbation is larger than eps: a pixel moved by {biggest:.3f}. "
                 "FGSM moves each pixel by exactly eps: x + eps * tf.sign(grad), then clip to [0, 1].")
        if biggest <= ATOL:
            fail(exercise, "x_adv equals x: your function did not perturb the images at all.")
        fail(exercise, f"(eps = {eps:g}) {problem}")
    message = (f"matches cleverhans' tf2 FGSM on every pixel at eps = {', '.join(f'{e:g}' for e in eps_values)} "
               "(logits in, stays in [0, 1], within eps, increases the loss).")
    return Feedback(exercise, True, message, {"eps_values": tuple(eps_values)}).show()


# ---------------------------------------------------------------------------------------------
# Exercise: FGSM from a random start (the perturbation the custom train_step trains on)
# ---------------------------------------------------------------------------------------------

def _rs_start(recorder: Recorder, x: np.ndarray) -> np.ndarray | None:
    """The point the gradient was taken at: the last recorded input of x's shape that is not x."""
    for seen in reversed(recorder.inputs):
        if seen.shape == x.shape and not np.array_equal(seen, x):
            return seen
    return None


def _start_problem(x: np.ndarray, start: np.ndarray, eps: float) -> str | None:
    free = (x >= eps) & (x <= 1 - eps)  # pixels neither bound of [0, 1] can clip
    d = (start - x)[free]
    if d.size < 200:
        return None
    if (d >= -ATOL).mean() > 0.98:
        return (f"your random start only goes up: every start pixel lies in [0, {eps:g}]. Draw delta from the whole "
                "ball: tf.random.uniform(tf.shape(x), -eps, eps).")
    if np.abs(d).max() > eps + ATOL:
        return (f"your random start leaves the eps-ball (a start pixel moved by {np.abs(d).max():.3f} with eps = "
                f"{eps:g}): tf.random.normal is not bounded. Draw delta with tf.random.uniform(tf.shape(x), -eps, eps).")
    sorted_d = np.sort(d).astype(np.float64)
    uniform_cdf = np.clip((sorted_d + eps) / (2 * eps), 0, 1)
    empirical = np.arange(1, len(sorted_d) + 1) / len(sorted_d)
    if np.abs(empirical - uniform_cdf).max() > 0.1:
        return (f"your random start is not uniform on [-eps, eps] (its standard deviation is {d.std():.3f}; uniform "
                f"gives eps / sqrt(3) = {eps / 3 ** 0.5:.3f}): draw delta with tf.random.uniform(tf.shape(x), -eps, eps).")
    return None


def _rs_expected(inner, x, y, start, eps, alpha) -> np.ndarray:
    g = input_grad(inner, start, y)
    return np.clip(x + np.clip((start - x) + alpha * np.sign(g), -eps, eps), 0, 1)


def _rs_step_problem(inner, x, y, start, out, eps, alpha) -> str | None:
    if agree(out, _rs_expected(inner, x, y, start, eps, alpha)) >= 0.99:
        return None
    g = input_grad(inner, start, y)
    delta = out - x
    if np.abs(delta).max() > eps + ATOL:
        return (f"your perturbation is larger than eps (a pixel moved by {np.abs(delta).max():.3f} with eps = {eps:g}): "
                "the step alpha is larger than eps, so project delta back onto the ball after the step, "
                "tf.clip_by_value(delta, -eps, eps), then clip x + delta to [0, 1].")
    free = (np.abs(delta) < eps - 1e-4) & (out > ATOL) & (out < 1 - ATOL) & (g != 0)
    step = (delta - (start - x))[free]
    if free.sum() < 50 or np.abs(step).max() <= ATOL:
        return ("x_adv is the random start alone: after drawing delta, compute the loss at x + delta, take its "
                "gradient with respect to delta (tape.watch(delta)), and step alpha * tf.sign(grad).")
    same_sign = float((np.sign(step) == np.sign(g[free])).mean())
    if same_sign < 0.1:
        return ("wrong direction: you subtracted the gradient step, so the loss goes down. Training needs the hardest "
                "nearby images: delta + alpha * tf.sign(grad).")
    size = _uniform_size(step)
    if size is None and same_sign > 0.9:
        return "you stepped by the gradient itself instead of its sign: the step is alpha * tf.sign(grad)."
    if size is not None and abs(size - alpha) > 1e-4:
        if abs(size - eps) <= 1e-4:
            return (f"your step was eps ({eps:g}) instead of alpha ({alpha:g}): step alpha * tf.sign(grad) from the "
                    "random start, then project delta back to [-eps, eps].")
        return f"every pixel stepped by {size:.3f}, but alpha is {alpha:g}: step alpha * tf.sign(grad)."
    return ("x_adv is not one FGSM step from your random start: take the gradient of the cross-entropy (logits, "
            "from_logits=True) at x + delta, step alpha * tf.sign(grad), clip delta to [-eps, eps] and x + delta to [0, 1].")


def fgsm_random_start_tf(fn: Callable, eps: float = 0.3, alpha: float | None = None) -> Feedback:
    """Check a learner's `fn(model, x, y, eps, alpha) -> x_adv`, FGSM from a random start in TensorFlow:
    a start uniform on [-eps, eps], the gradient taken there, one step alpha * sign, projected to the
    eps-ball and [0, 1], and a new start on every call."""
    from .. import attacks_tf

    exercise = "fgsm_random_start_tf"
    alpha = 1.25 * eps if alpha is None else alpha
    expected = "fgsm_random_start(model, x, y, eps, alpha)"
    refs = [(attacks_tf.fgsm_random_start, "labkit.attacks_tf.fgsm_random_start"),
            (attacks_tf.fgsm_reference, "labkit.attacks_tf.fgsm_reference"),
            (attacks_tf.pgd_cleverhans, "labkit.attacks_tf.pgd_cleverhans")]
    inner, x, y = bench()
    model = Recorder(inner)
    weights = inner.get_weights()
    x_np, y_np = np.asarray(x), np.asarray(y)
    first = _as_images(exercise, _run(exercise, fn, (model, x, y, eps, alpha), expected, refs), x_np)
    start = _rs_start(model, x_np)
    ran_model = bool(model.inputs)
    model.inputs.clear()
    second = _as_images(exercise, _run(exercise, fn, (model, x, y, eps, alpha), expected, refs), x_np)
    _side_effects(exercise, inner, weights)
    _range(exercise, first, eps)
    grad = input_grad(inner, x_np, y_np)
    if agree(first, _fgsm(x_np, grad, eps)) >= 0.95:
        fail(exercise, "x_adv is plain FGSM: there is no random start. Start from x + delta with delta drawn from "
             "tf.random.uniform(tf.shape(x), -eps, eps), step alpha * sign of the gradient there, then project back "
             "to the eps-ball.")
    if np.array_equal(first, second):
        fail(exercise, "two calls gave exactly the same x_adv: draw the random start afresh on every call (no fixed "
             "seed inside the function, no reused delta).")
    if start is None:
        if ran_model:
            fail(exercise, "you took the gradient at x, not at the random start: compute the loss at x + delta and "
                 "take its gradient with respect to delta, so the step starts from the random point.")
        fail(exercise, "x_adv looks like the random start alone (the model was never run): compute the loss at "
             "x + delta, take its gradient, and step alpha * tf.sign(grad).")
    problem = _start_problem(x_np, start, eps) or _rs_step_problem(inner, x_np, y_np, start, first, eps, alpha)
    if problem:
        fail(exercise, problem)
    clean, yours = loss_of(inner, x_np, y_np), (loss_of(inner, first, y_np) + loss_of(inner, second, y_np)) / 2
    message = (f"random start uniform on [-{eps:g}, {eps:g}], one step of alpha = {alpha:g} along the gradient's sign "
               f"there, within eps and [0, 1]: the loss goes from {clean:.2f} to {yours:.2f}.")
    return Feedback(exercise, True, message, {"clean_loss": clean, "loss": yours}).show()


__all__ = ["fgsm_tf", "fgsm_random_start_tf", "bench", "Recorder", "TODO_MESSAGE"]
