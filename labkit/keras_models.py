"""Keras 3 for the TensorFlow twin of the evasion lab (01b): set-up, the MNIST CNN, the training
schedules a custom `train_step` reads, a tqdm progress bar for `fit`, and evaluation.

Keras 3 (the `keras` package, TensorFlow backend) is what `tf.keras` means in TensorFlow >= 2.16.
Lab 03b needs Keras 2 (tf-keras, chosen by TF_USE_LEGACY_KERAS=1) because TF Privacy's optimizers
do; nothing in the evasion twin does, so it uses the current API. The two must never meet in one
process: `setup_keras` refuses a process where TensorFlow already chose Keras 2.

    tf, keras = keras_models.setup_keras(seed)
    model = keras_models.small_cnn()                       # logits, like labkit.models.SmallCNN
    X = keras_models.to_images(x_uint8)                    # (N, 28, 28, 1) float32 in [0, 1]
    lr = keras_models.Triangle(5e-3, total_steps)          # 0 -> peak -> 0, once per batch
    eps = keras_models.EpsilonRamp(0.3, ramp_steps)        # eps(step) inside train_step
    model.fit(X, Y, verbose=0, callbacks=[keras_models.ProgressBar("epoch 1")])
    keras_models.accuracy(model, X_test, Y_test)
"""
from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["KerasVersionError", "setup_keras", "small_cnn", "to_images", "Triangle", "EpsilonRamp", "ProgressBar",
           "predict_logits", "accuracy", "count_parameters", "last_metric", "adversarial_grid"]


class KerasVersionError(RuntimeError):
    """The process runs Keras 2 (tf-keras) or a non-TensorFlow Keras backend, but this lab needs Keras 3 on TensorFlow."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def setup_keras(seed: int = 0, threads: int | None = None):
    """Import TensorFlow and Keras 3 (TensorFlow backend), set threads and seeds; return (tf, keras).

    Refuses, naming the fix, when TF_USE_LEGACY_KERAS asks for Keras 2 (tf.keras would then be
    tf-keras while `import keras` is Keras 3: two Keras in one process) or KERAS_BACKEND is not
    tensorflow (tf.GradientTape cannot see a JAX or torch computation).
    """
    if _truthy(os.environ.get("TF_USE_LEGACY_KERAS")):
        hint = ("restart the kernel with TF_USE_LEGACY_KERAS unset" if "tensorflow" in sys.modules else
                "unset TF_USE_LEGACY_KERAS (lab 03b sets it for TF Privacy; run that lab in its own kernel)")
        raise KerasVersionError(f"TF_USE_LEGACY_KERAS={os.environ['TF_USE_LEGACY_KERAS']!r} makes tf.keras Keras 2 "
                                f"(tf-keras), but this lab uses Keras 3: {hint}.")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow").strip().lower()
    if backend != "tensorflow":
        raise KerasVersionError(f"KERAS_BACKEND={backend!r}, but this lab computes gradients with tf.GradientTape, "
                                "which needs the TensorFlow backend: unset KERAS_BACKEND (or set it to tensorflow) "
                                "and restart the kernel.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf
    import keras

    if not keras.__version__.startswith("3.") or not tf.keras.__name__.startswith("keras"):
        raise KerasVersionError(f"tf.keras is {tf.keras.__name__} and keras is {keras.__version__}, but this lab needs "
                                "Keras 3 as tf.keras: restart the kernel without TF_USE_LEGACY_KERAS.")
    from . import env

    env.setup_tensorflow(tf, keras, seed, threads)
    return tf, keras


def _keras():
    if "keras" not in sys.modules or "tensorflow" not in sys.modules:
        return setup_keras()[1]
    import keras

    return keras


def small_cnn(num_classes: int = 10, image_size: int = 28, channels: int = 1, hidden: int = 128,
              seed: int | None = None, name: str = "small_cnn"):
    """The Keras twin of `labkit.models.SmallCNN`: conv 3x3 (32, same padding), ReLU, max-pool 2,
    conv 3x3 (64), ReLU, max-pool 2, dense `hidden` ReLU, dense `num_classes` logits (no softmax).
    421,642 weights for MNIST. `seed` seeds every initializer (the global Keras seed is not drawn
    from, so a seeded model leaves the caller's random numbers alone)."""
    keras = _keras()
    if image_size % 4:
        raise ValueError(f"small_cnn pools twice by 2, so image_size must be a multiple of 4 (got {image_size}).")
    L = keras.layers

    def init(i):
        return "glorot_uniform" if seed is None else keras.initializers.GlorotUniform(seed=seed + i)

    return keras.Sequential([
        keras.Input((image_size, image_size, channels)),
        L.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer=init(0), name="conv1"),
        L.MaxPool2D(2),
        L.Conv2D(64, 3, padding="same", activation="relu", kernel_initializer=init(1), name="conv2"),
        L.MaxPool2D(2),
        L.Flatten(),
        L.Dense(hidden, activation="relu", kernel_initializer=init(2), name="fc1"),
        L.Dense(num_classes, kernel_initializer=init(3), name="logits"),
    ], name=name)


def count_parameters(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def to_images(x) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, C) -> float32 (N, H, W, C) in [0, 1] (channels last, Keras' layout)."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(f"to_images expects uint8 pixels (0-255) as datasets.load returns them; got {x.dtype}. "
                        "Images already in [0, 1] need no conversion.")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected images shaped (N, H, W) or (N, H, W, C); got {x.shape}.")
    return (x / 255.0).astype(np.float32)


def _schedule_base():
    return _keras().optimizers.schedules.LearningRateSchedule


class Triangle:
    """Learning rate rising linearly from 0 to `peak` over the first `peak_at` of `total_steps`, then
    falling towards 0: the schedule of `labkit.train.triangle_schedule` (Wong et al. 2020), as a Keras
    schedule. Pass it as the optimizer's learning_rate; Keras calls it with the step number."""

    def __new__(cls, peak: float, total_steps: int, peak_at: float = 0.4):
        if total_steps < 1 or not 0 < peak_at < 1 or peak <= 0:
            raise ValueError(f"Triangle needs peak > 0, total_steps >= 1 and peak_at in (0, 1); got peak={peak}, "
                             f"total_steps={total_steps}, peak_at={peak_at}.")
        base = _schedule_base()

        class _Triangle(base):
            def __init__(self):
                self.peak, self.total_steps, self.peak_at = float(peak), int(total_steps), float(peak_at)

            def __call__(self, step):
                import tensorflow as tf

                total = float(self.total_steps)
                top = self.peak_at * total
                t = tf.minimum(tf.cast(step, tf.float32) + 1.0, total)
                rise, fall = t / top, (total + 1.0 - t) / (total + 1.0 - top)
                return self.peak * tf.where(t <= top, rise, fall)

            def get_config(self):
                return {"peak": self.peak, "total_steps": self.total_steps, "peak_at": self.peak_at}

        return _Triangle()


class EpsilonRamp:
    """The training epsilon as a function of the optimizer's step: end * (step + 1) / steps, then `end`
    (the `labkit.train.Ramp` of lab 01, written for a compiled train_step: it reads the step counter
    instead of counting its own calls). steps = 0: always `end`."""

    def __init__(self, end: float, steps: int):
        if steps < 0 or end < 0:
            raise ValueError(f"EpsilonRamp needs end >= 0 and steps >= 0; got end={end}, steps={steps}.")
        self.end, self.steps = float(end), int(steps)

    def __call__(self, step):
        import tensorflow as tf

        if self.steps == 0:
            return tf.constant(self.end, tf.float32)
        return self.end * tf.minimum(1.0, (tf.cast(step, tf.float32) + 1.0) / self.steps)

    def value(self, step: int) -> float:
        return float(self(step))

    def __repr__(self) -> str:
        return f"EpsilonRamp(end={self.end:g}, steps={self.steps})"


def ProgressBar(desc: str = "training", leave: bool = True):
    """A Keras callback that shows `fit` as one tqdm bar (batches of all epochs) with the running
    loss and accuracy; use it with verbose=0 (Keras' own bar prints a line per update in notebooks)."""
    keras = _keras()
    from tqdm.auto import tqdm

    class _Bar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            steps = self.params.get("steps") or 0
            self.bar = tqdm(total=steps * self.params.get("epochs", 1), desc=desc, leave=leave, mininterval=0.5)

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if logs and batch % 20 == 0:
                self.bar.set_postfix({k: f"{float(v):.3f}" for k, v in logs.items()}, refresh=False)

        def on_train_end(self, logs=None):
            self.bar.close()

    return _Bar()


def predict_logits(model, x, batch_size: int = 500) -> np.ndarray:
    """The model's logits for x (numpy or tensor, channels last), batch by batch, inference mode."""
    out = [np.asarray(model(np.asarray(x[i: i + batch_size]), training=False)) for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def accuracy(model, x, y, batch_size: int = 500) -> float:
    """Fraction of x the model classifies as y."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels.")
    return float((predict_logits(model, x, batch_size).argmax(1) == np.asarray(y)).mean())


def last_metric(history, name: str) -> float:
    """The last epoch's value of metric `name` from a Keras History (nan when fit did not log it)."""
    values = history.history.get(name)
    if not values:
        return float("nan")
    return float(values[-1])


def adversarial_grid(model, x, y, x_adv, eps: float, title: str):
    """`labkit.plots.adversarial_grid` for a Keras model and channels-last images: clean row,
    adversarial row (prediction and confidence, red when wrong), and the change."""
    import torch

    from . import plots

    def to_torch(a):
        return torch.tensor(np.asarray(a, np.float32).transpose(0, 3, 1, 2))

    def torch_view(t):  # NCHW torch tensor -> the Keras model's logits as a torch tensor
        return torch.tensor(np.asarray(model(t.numpy().transpose(0, 2, 3, 1), training=False)))

    return plots.adversarial_grid(torch_view, to_torch(x), torch.as_tensor(np.asarray(y)), to_torch(x_adv), eps, title)
