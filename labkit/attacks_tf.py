"""Reference evasion attacks for Keras models (the TensorFlow twin of `labkit.attacks`).

FGSM and the training-time PGD come from cleverhans 4 (`cleverhans.tf2.attacks`, logits in);
FGSM with a random start (Wong et al. 2020) is short enough to write here. The attacks that judge
a defence come from the Adversarial Robustness Toolbox through its `TensorFlowV2Classifier`: PGD
(Madry et al.), Auto-PGD with the cross-entropy and the DLR loss (Croce and Hein 2020) and the
black-box Square attack. `ladder` runs them on the same images and returns a `labkit.attacks.Ladder`
(the same table and plot as lab 01), whose worst case per image is the robustness headline.

ART's own DLR loss for TensorFlow walks the batch in a Python loop (about four times slower than
cross-entropy on CPU); `dlr_loss` is the same formula vectorised, passed to ART's APGD as the
estimator's loss (tests compare the two).

Images: float32 arrays or tensors (N, H, W, C) in [0, 1]; labels: integer class indices. Every
function returns adversarial images as a numpy array in [0, 1]; none changes the model.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .attacks import Ladder, _numpy_seed, run_ladder

__all__ = ["fgsm_reference", "pgd_cleverhans", "fgsm_random_start", "classifier", "dlr_loss", "pgd", "apgd",
           "square", "accuracy_under_attack", "robust_mask", "ladder", "ladder_rungs"]

CLIP_MIN, CLIP_MAX = 0.0, 1.0


def _tf():
    import tensorflow as tf

    return tf


def fgsm_reference(model, x, eps: float, y=None):
    """Untargeted FGSM by cleverhans (tf2): x + eps * sign(gradient of the cross-entropy of the
    logits), clipped to [0, 1]. y: true labels; None uses the model's own predictions. Returns a tensor."""
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

    tf = _tf()
    y = None if y is None else tf.cast(y, tf.int64)
    return fast_gradient_method(model, tf.convert_to_tensor(x, tf.float32), eps, np.inf, clip_min=CLIP_MIN,
                                clip_max=CLIP_MAX, y=y)


def pgd_cleverhans(model, x, y, eps, step, steps: int, rand_init: bool = True):
    """PGD by cleverhans (tf2), L-infinity, from a uniform random start: usable inside a compiled
    `train_step` (eps and step may be tensors). Returns a tensor."""
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    tf = _tf()
    x = tf.convert_to_tensor(x, tf.float32)
    return projected_gradient_descent(model, x, eps, step, int(steps), np.inf, clip_min=CLIP_MIN, clip_max=CLIP_MAX,
                                      y=tf.cast(y, tf.int64), rand_init=rand_init, rand_minmax=eps,
                                      sanity_checks=False)


def fgsm_random_start(model, x, y, eps, alpha, seed: Optional[int] = None):
    """FGSM from a random start (Wong, Rice and Kolter 2020): delta uniform on [-eps, eps] (kept so
    that x + delta stays in [0, 1]), one step alpha * sign of the gradient at x + delta, delta
    projected back to [-eps, eps], result clipped to [0, 1]. Returns a tensor."""
    tf = _tf()
    x = tf.convert_to_tensor(x, tf.float32)
    delta = tf.random.uniform(tf.shape(x), -eps, eps, seed=seed)
    delta = tf.clip_by_value(x + delta, CLIP_MIN, CLIP_MAX) - x
    with tf.GradientTape() as tape:
        tape.watch(delta)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(y, tf.int64), logits=model(x + delta, training=False)))
    grad = tape.gradient(loss, delta)
    delta = tf.clip_by_value(delta + alpha * tf.sign(grad), -eps, eps)
    return tf.clip_by_value(x + delta, CLIP_MIN, CLIP_MAX)


# ---------------------------------------------------------------------------------------------
# ART: the attacks that judge a defence
# ---------------------------------------------------------------------------------------------

def dlr_loss(y_true, logits):
    """Difference of logits ratio (Croce and Hein 2020), per image, ready for gradient ascent:
    -(z_y - max_{i != y} z_i) / (z_(1) - z_(3)), where z_(k) is the k-th largest logit. Labels one-hot
    (as ART passes them) or class indices. The formula of ART's TensorFlow DLR loss, without its
    Python loop over the batch."""
    tf = _tf()
    logits = tf.convert_to_tensor(logits)
    if y_true.shape.rank == 2:
        labels = tf.argmax(y_true, axis=1, output_type=tf.int32)
    else:
        labels = tf.cast(y_true, tf.int32)
    top = tf.sort(logits, axis=1, direction="DESCENDING")
    z_y = tf.gather(logits, labels, axis=1, batch_dims=1)
    is_top = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
    z_other = tf.where(is_top, top[:, 1], top[:, 0])  # the largest logit that is not the true class
    return -(z_y - z_other) / (top[:, 0] - top[:, 2])


class _DLRLoss:
    """`dlr_loss` as an ART loss object: ART sets `reduction` to "none", "sum_over_batch_size" or "sum"."""

    reduction = "sum_over_batch_size"

    def __call__(self, y_true, y_pred, *args, **kwargs):
        tf = _tf()
        per_image = dlr_loss(tf.convert_to_tensor(y_true), y_pred)
        reduction = str(getattr(self.reduction, "value", self.reduction)).lower()
        if reduction == "none":
            return per_image
        return tf.reduce_sum(per_image) if reduction == "sum" else tf.reduce_mean(per_image)


def classifier(model, input_shape=None, nb_classes: int = 10, loss: str = "ce"):
    """ART's TensorFlowV2Classifier around a Keras model that returns logits; pixels in [0, 1].
    loss: "ce" (cross-entropy from logits) or "dlr" (vectorised difference of logits ratio)."""
    from art.estimators.classification import TensorFlowV2Classifier

    keras = __import__("keras")
    if loss == "ce":
        loss_object = keras.losses.CategoricalCrossentropy(from_logits=True)
    elif loss == "dlr":
        loss_object = _DLRLoss()
    else:
        raise ValueError(f"loss must be 'ce' or 'dlr'; got {loss!r}.")
    if input_shape is None:
        try:
            input_shape = model.input_shape[1:]
        except (AttributeError, ValueError):
            raise ValueError("this Keras model does not know its input shape (a subclassed model): pass "
                             "input_shape=x.shape[1:]") from None
    input_shape = tuple(input_shape)
    return TensorFlowV2Classifier(model=model, nb_classes=nb_classes, input_shape=input_shape, loss_object=loss_object,
                                  clip_values=(CLIP_MIN, CLIP_MAX))


def _numpy(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _labels(y) -> np.ndarray:
    return np.asarray(y).astype(np.int64)


def _project(x_adv, x, eps: float) -> np.ndarray:
    # ART works in float32; project once more so that the L-infinity budget and [0, 1] hold exactly.
    x = _numpy(x)
    return np.clip(np.clip(_numpy(x_adv), x - eps, x + eps), CLIP_MIN, CLIP_MAX).astype(np.float32)


def pgd(model, x, y, eps: float, step: float = 0.01, steps: int = 40, restarts: int = 1, batch_size: int = 500,
        seed: Optional[int] = 0) -> np.ndarray:
    """PGD (Madry et al. 2018) by ART, L-infinity, from a random start; with `restarts` > 1 ART keeps,
    per image, the first start that fools the model. seed: numpy seed for the random starts."""
    from art.attacks.evasion import ProjectedGradientDescent

    if restarts < 1:
        raise ValueError(f"restarts is the number of random starts, at least 1; got {restarts}.")
    with _numpy_seed(seed):
        attack = ProjectedGradientDescent(classifier(model, np.shape(x)[1:]), norm=np.inf, eps=eps, eps_step=step,
                                          max_iter=steps, num_random_init=restarts, batch_size=batch_size,
                                          verbose=False)
        return _project(attack.generate(x=_numpy(x), y=_labels(y)), x, eps)


def apgd(model, x, y, eps: float, loss: str = "ce", steps: int = 100, restarts: int = 3, batch_size: int = 500,
         seed: Optional[int] = 0) -> np.ndarray:
    """Auto-PGD (Croce and Hein 2020) by ART, L-infinity: adaptive step size, momentum, `steps`
    iterations from `restarts` random starts (later starts attack only the images still correct).
    loss: "ce" or "dlr" (difference of logits ratio: does not saturate where cross-entropy does)."""
    from art.attacks.evasion import AutoProjectedGradientDescent

    if loss not in ("ce", "dlr"):
        raise ValueError(f"loss must be 'ce' or 'dlr'; got {loss!r}.")
    with _numpy_seed(seed):
        # loss_type=None: ART's APGD ascends the estimator's own loss (ours), not a copy it builds.
        attack = AutoProjectedGradientDescent(classifier(model, np.shape(x)[1:], loss=loss), norm=np.inf, eps=eps,
                                              eps_step=2 * eps, max_iter=steps, targeted=False, nb_random_init=restarts,
                                              batch_size=batch_size, loss_type=None, verbose=False)
        return _project(attack.generate(x=_numpy(x), y=_labels(y)), x, eps)


def square(model, x, y, eps: float, queries: int = 300, p_init: float = 0.8, batch_size: int = 500,
           seed: Optional[int] = 0) -> np.ndarray:
    """Square attack (Andriushchenko et al. 2020) by ART, L-infinity: black-box, reads only the
    model's outputs, `queries` random square-shaped updates per image."""
    from art.attacks.evasion import SquareAttack

    with _numpy_seed(seed):
        attack = SquareAttack(classifier(model, np.shape(x)[1:]), norm=np.inf, eps=eps, max_iter=queries, p_init=p_init,
                              nb_restarts=1, batch_size=batch_size, verbose=False)
        return _project(attack.generate(x=_numpy(x), y=_labels(y)), x, eps)


# ---------------------------------------------------------------------------------------------
# Accuracy under attack, and the ladder
# ---------------------------------------------------------------------------------------------

def _predict(model, x) -> np.ndarray:
    return np.asarray(model(_numpy(x), training=False)).argmax(1)


def robust_mask(model, x, y, attack: Callable, batch_size: int = 500) -> np.ndarray:
    """Per image, True when `model` still classifies `attack(model, x, y)` correctly."""
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i: i + batch_size], _labels(y[i: i + batch_size])
        out.append(_predict(model, attack(model, xb, yb)) == yb)
    return np.concatenate(out) if out else np.zeros(0, bool)


def accuracy_under_attack(model, x, y, attack: Callable | None = None, eps: float = 0.3, batch_size: int = 500,
                          **attack_kwargs) -> float:
    """Accuracy of `model` on `attack(model, x, y, eps, **attack_kwargs)` batch by batch (default:
    cleverhans FGSM with the true labels); eps = 0 measures clean accuracy."""
    if eps == 0:
        return float(robust_mask(model, x, y, lambda m, xb, yb: xb, batch_size).mean())
    attack = attack or (lambda m, xb, yb, e, **kw: fgsm_reference(m, xb, e, y=yb))
    return float(robust_mask(model, x, y, lambda m, xb, yb: attack(m, xb, yb, eps, **attack_kwargs),
                             batch_size).mean())


def ladder(model, x, y, rungs: dict, worst_of=(), sizes: Optional[dict] = None, worst_name: str = "worst case",
           batch_size: int = 500, progress: bool = True) -> Ladder:
    """Run each attack of `rungs` ({name: attack(model, x, y) -> x_adv}, weakest first) on the first
    `sizes.get(name, len(x))` images; the per-image worst case over `worst_of` is the last rung.
    Returns a `labkit.attacks.Ladder` (per-image results as numpy booleans)."""
    return run_ladder(robust_mask, model, x, y, rungs, worst_of, sizes, worst_name, batch_size, progress)


def ladder_rungs(eps: float, fgsm: Optional[Callable] = None, pgd_step: float = 0.01, pgd_steps: int = 40,
                 restarts: int = 3, apgd_steps: int = 100, apgd_restarts: int = 3, square_queries: int = 0,
                 seed: int = 0) -> dict:
    """The evaluation ladder, weakest first: FGSM (`fgsm(model, x, y, eps)`, default cleverhans), PGD
    (ART), PGD from `restarts` random starts (when restarts > 1), APGD-CE, APGD-DLR, and Square when
    `square_queries` > 0.
    "APGD-CE" and "APGD-DLR" are the ones to take the worst case over."""
    fgsm = fgsm or (lambda m, x, y, e: fgsm_reference(m, x, e, y=y))
    rungs = {
        "FGSM": lambda m, x, y: fgsm(m, x, y, eps),
        f"PGD-{pgd_steps}": lambda m, x, y: pgd(m, x, y, eps, pgd_step, pgd_steps, restarts=1, seed=seed),
        "APGD-CE": lambda m, x, y: apgd(m, x, y, eps, "ce", steps=apgd_steps, restarts=apgd_restarts, seed=seed),
        "APGD-DLR": lambda m, x, y: apgd(m, x, y, eps, "dlr", steps=apgd_steps, restarts=apgd_restarts, seed=seed),
    }
    if restarts > 1:  # ART's PGD runs every start on every image: as costly as `restarts` PGD runs
        rungs[f"PGD-{pgd_steps}, {restarts} restarts"] = lambda m, x, y: pgd(m, x, y, eps, pgd_step, pgd_steps,
                                                                            restarts=restarts, seed=seed + 1)
        rungs = {name: rungs[name] for name in ("FGSM", f"PGD-{pgd_steps}", f"PGD-{pgd_steps}, {restarts} restarts",
                                                "APGD-CE", "APGD-DLR")}
    if square_queries:
        rungs[f"Square, {square_queries} queries"] = lambda m, x, y: square(m, x, y, eps, queries=square_queries,
                                                                           seed=seed)
    return rungs
