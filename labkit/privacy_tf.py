"""TensorFlow Privacy plumbing for the DP twin lab: Keras 2 set-up, the tanh CNN, DP models and
optimizers, timing, and privacy accounting (TF Privacy, dp_accounting, Opacus side by side).

TensorFlow is imported lazily: the accounting helpers need only dp_accounting (and Opacus for
the comparison), so they stay fast to import and test.

    tf = privacy_tf.setup_tf(seed)                 # Keras 2 (tf-keras), threads, seeds
    model = privacy_tf.dp_model(l2_norm_clip=1.0, noise_multiplier=0.7)   # fast clipping path
    sigma = privacy_tf.noise_for_epsilon(3.0, n=60_000, batch_size=512, epochs=1, delta=1e-6)
    log = privacy_tf.poisson_fit(model, x, y, batch_size=512, epochs=1)   # the sampling the epsilon assumes
    privacy_tf.spent_epsilon(log, sigma, delta=1e-6)                    # epsilon of the steps the log records
    privacy_tf.accounting_table(n=60_000, batch_size=512, epochs=1, noise_multiplier=sigma, delta=1e-6)
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field

__all__ = [
    "setup_tf", "tanh_cnn_layers", "conv_reference_model", "plain_model", "dp_model", "dp_optimizer_model",
    "layer_registry", "dense_over_positions", "seconds_per_example", "steps_for", "dp_sgd_event",
    "dp_sgd_epsilon", "noise_for_epsilon", "fit", "poisson_fit", "poisson_batches", "padded_size", "TrainingLog",
    "spent_epsilon", "batch_size_spread", "accuracy", "tf_privacy_statement", "deprecated_epsilon", "opacus_epsilon",
    "accounting_table", "KerasVersionError",
]


class KerasVersionError(RuntimeError):
    """TensorFlow was imported with Keras 3, which TF Privacy's Keras optimizers do not support."""


# ---------------------------------------------------------------------------------------------
# TensorFlow with Keras 2
# ---------------------------------------------------------------------------------------------

def setup_tf(seed: int = 0, threads: int | None = None):
    """Import TensorFlow with Keras 2 (tf-keras), set its threads and seeds; return the module.

    TF Privacy's Keras optimizers and DP models need Keras 2, chosen by TF_USE_LEGACY_KERAS=1
    *before* TensorFlow is first imported. `import tensorflow_privacy` itself fails on recent
    TensorFlow (its __init__ imports the removed tensorflow_estimator), so the submodules are
    imported directly with `sys.skip_tf_privacy_import = True`.
    """
    already = "tensorflow" in sys.modules
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    sys.skip_tf_privacy_import = True
    import tensorflow as tf

    if not tf.keras.__name__.startswith("tf_keras"):
        hint = ("TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set; restart the kernel and call "
                "privacy_tf.setup_tf() before anything imports tensorflow." if already else
                "install tf-keras (pip install tf-keras) and set TF_USE_LEGACY_KERAS=1.")
        raise KerasVersionError(f"tf.keras is Keras 3 ({tf.keras.__name__}), but TF Privacy needs Keras 2: {hint}")
    from . import env

    env.setup_tensorflow(tf, tf.keras, seed, threads)
    return tf


def _tf():
    if "tensorflow" not in sys.modules:
        setup_tf()
    import tensorflow as tf

    return tf


# ---------------------------------------------------------------------------------------------
# The model: a Tramer-Boneh style tanh CNN (the Opacus MNIST example's architecture)
# ---------------------------------------------------------------------------------------------

def _patches(kernel: int, stride: int, pad: int, name: str):
    """A layer without weights that cuts every kernel x kernel window into one vector, so that a
    Dense layer applied to it is exactly a convolution (the "im2col" view of a convolution)."""
    tf = _tf()

    def cut(t):
        if pad:
            t = tf.pad(t, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        return tf.image.extract_patches(t, [1, kernel, kernel, 1], [1, stride, stride, 1], [1, 1, 1, 1], "VALID")

    return tf.keras.layers.Lambda(cut, name=name)


def tanh_cnn_layers(as_patches: bool = True) -> list:
    """The layers of the tanh CNN (26,010 weights): conv 16 8x8 stride 2 pad 3, max-pool 2 stride 1,
    conv 32 4x4 stride 2, max-pool 2 stride 1, dense 32, dense 10 logits; tanh everywhere.

    as_patches=True writes each convolution as patches + Dense (same function, same weights);
    TF Privacy's fast clipping registry knows Dense layers but not Conv2D.
    """
    tf = _tf()
    L = tf.keras.layers
    if as_patches:
        conv1 = [_patches(8, 2, 3, "patches1"), L.Dense(16, activation="tanh", name="conv1")]
        conv2 = [_patches(4, 2, 0, "patches2"), L.Dense(32, activation="tanh", name="conv2")]
    else:
        conv1 = [L.ZeroPadding2D(3), L.Conv2D(16, 8, strides=2, activation="tanh", name="conv1")]
        conv2 = [L.Conv2D(32, 4, strides=2, activation="tanh", name="conv2")]
    return [tf.keras.Input((28, 28, 1)), *conv1, L.MaxPool2D(2, 1), *conv2, L.MaxPool2D(2, 1), L.Flatten(),
            L.Dense(32, activation="tanh", name="fc1"), L.Dense(10, name="logits")]


def conv_reference_model(patch_model):
    """The same network written with Conv2D layers, carrying `patch_model`'s weights (a check
    that patches + Dense really is a convolution)."""
    tf = _tf()
    conv = tf.keras.Sequential(tanh_cnn_layers(as_patches=False))
    for name, shape in (("conv1", (8, 8, 1, 16)), ("conv2", (4, 4, 16, 32))):
        kernel, bias = patch_model.get_layer(name).get_weights()
        # extract_patches orders each patch as (row, column, channel), like Conv2D's kernel.
        conv.get_layer(name).set_weights([kernel.reshape(shape), bias])
    for name in ("fc1", "logits"):
        conv.get_layer(name).set_weights(patch_model.get_layer(name).get_weights())
    return conv


def _loss(reduction: bool = True):
    tf = _tf()
    if reduction:
        return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.NONE)


def _sgd(lr: float, momentum: float):
    return _tf().keras.optimizers.SGD(learning_rate=lr, momentum=momentum)


def plain_model(lr: float = 0.1, momentum: float = 0.9):
    """The non-private tanh CNN, compiled with SGD and cross-entropy."""
    tf = _tf()
    model = tf.keras.Sequential(tanh_cnn_layers())
    model.compile(optimizer=_sgd(lr, momentum), loss=_loss(), metrics=["accuracy"])
    return model


# ---------------------------------------------------------------------------------------------
# Fast gradient clipping: a registry function for Dense layers applied over many positions
# ---------------------------------------------------------------------------------------------

def dense_over_positions(layer_instance, input_args, input_kwargs, tape, num_microbatches=None):
    """TF Privacy registry function for `tf.keras.layers.Dense` that also handles a Dense layer
    applied at many positions (a convolution written as patches + Dense) efficiently.

    TF Privacy's own Dense function computes per-example gradient norms with the "ghost norm"
    trick, which builds a positions x positions Gram matrix per example: cheap for vectors, costly
    when a layer sees 196 positions. When positions * (inputs + outputs) > inputs * outputs it is
    cheaper to form each example's gradient (inputs x outputs) directly, which this does; in every
    other case it returns TF Privacy's function unchanged. Outputs are the same either way.
    """
    from tensorflow_privacy.privacy.fast_gradient_clipping.registry_functions.dense import dense_layer_computation

    tf = _tf()
    base_vars, outputs, ghost_norm_fn = dense_layer_computation(layer_instance, input_args, input_kwargs, tape,
                                                                num_microbatches)
    x = input_args[0]
    if num_microbatches is not None or x.shape.rank is None or x.shape.rank <= 2:
        return base_vars, outputs, ghost_norm_fn
    positions = math.prod(int(d) for d in x.shape[1:-1])
    n_in, n_out = int(x.shape[-1]), int(layer_instance.units)
    if positions * (n_in + n_out) <= n_in * n_out:
        return base_vars, outputs, ghost_norm_fn

    def squared_norms(base_vars_grads):
        xs = tf.reshape(x, [-1, positions, n_in])
        gs = tf.reshape(base_vars_grads, [-1, positions, n_out])
        kernel_grads = tf.einsum("bpi,bpo->bio", xs, gs)  # one gradient per example
        norms = tf.reduce_sum(tf.square(kernel_grads), axis=[1, 2])
        if layer_instance.use_bias:
            norms += tf.reduce_sum(tf.square(tf.reduce_sum(gs, axis=1)), axis=1)
        return norms

    return base_vars, outputs, squared_norms


def layer_registry(kind: str = "kit"):
    """TF Privacy's default layer registry ("tf_privacy"), or the same with `dense_over_positions`
    for Dense layers ("kit")."""
    from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry as lr

    if kind not in ("kit", "tf_privacy"):
        raise ValueError(f"layer_registry kind {kind!r} is unknown: use 'kit' or 'tf_privacy'.")
    registry = lr.make_default_layer_registry()
    if kind == "kit":
        registry.insert(_tf().keras.layers.Dense, dense_over_positions)
    return registry


def dp_model(l2_norm_clip: float, noise_multiplier: float, lr: float = 0.5, momentum: float = 0.9,
             registry: str = "kit"):
    """The tanh CNN as TF Privacy's DPSequential: per-example clipping with the fast gradient
    clipping path (every trainable layer is a registered Dense), Gaussian noise, SGD."""
    from tensorflow_privacy.privacy.keras_models.dp_keras_model import DPSequential

    _check_dp_args(l2_norm_clip, noise_multiplier)
    model = DPSequential(l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier, use_xla=False,
                         layer_registry=layer_registry(registry), layers=tanh_cnn_layers())
    if not model._enable_fast_peg_computation:  # noqa: SLF001 - TF Privacy exposes no public flag
        raise RuntimeError("TF Privacy did not enable fast gradient clipping for this model: a trainable layer "
                           "is not in the layer registry.")
    model.compile(optimizer=_sgd(lr, momentum), loss=_loss(), metrics=["accuracy"])
    return model


def dp_optimizer_model(kind: str, l2_norm_clip: float, noise_multiplier: float, num_microbatches: int,
                       lr: float = 0.5, momentum: float = 0.9):
    """The tanh CNN with a DP Keras optimizer: kind "plain" (DPKerasSGDOptimizer) or "vectorized"
    (VectorizedDPKerasSGDOptimizer). The loss must stay per example (reduction NONE)."""
    from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import DPKerasSGDOptimizer
    from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras_vectorized import VectorizedDPKerasSGDOptimizer

    classes = {"plain": DPKerasSGDOptimizer, "vectorized": VectorizedDPKerasSGDOptimizer}
    if kind not in classes:
        raise ValueError(f"optimizer kind {kind!r} is unknown: use 'plain' or 'vectorized'.")
    _check_dp_args(l2_norm_clip, noise_multiplier)
    optimizer = classes[kind](l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
                              num_microbatches=num_microbatches, learning_rate=lr, momentum=momentum)
    model = _tf().keras.Sequential(tanh_cnn_layers())
    model.compile(optimizer=optimizer, loss=_loss(reduction=False), metrics=["accuracy"])
    return model


def _check_dp_args(l2_norm_clip: float, noise_multiplier: float):
    if not l2_norm_clip > 0:
        raise ValueError(f"l2_norm_clip must be positive (got {l2_norm_clip}); 1.0 is a usual start.")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0 (got {noise_multiplier}); compute it with "
                         "noise_for_epsilon(target_eps, ...).")


@dataclass
class TrainingLog:
    """What a training run did, as the accountant needs it: how it sampled, how many steps, and the
    size of every batch (Poisson sampling: the number of real examples, padding excluded)."""

    n: int
    batch_size: int  # the fixed batch size, or the expected one under Poisson sampling
    epochs: float
    sampling: str  # "poisson" or "shuffled" (fixed-size batches of a shuffled epoch)
    steps: int
    seconds: float
    batch_sizes: list = field(default_factory=list, repr=False)
    padded_to: int | None = None

    @property
    def sample_rate(self) -> float:
        return self.batch_size / self.n


def _progress_callback(total: int, desc: str):
    """A tqdm bar as a Keras callback (tqdm.keras imports Keras 3, which must not meet tf.keras)."""
    from tqdm.auto import tqdm

    tf = _tf()

    class Progress(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=total, desc=desc, unit="step")

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if logs and batch % 10 == 0:
                self.bar.set_postfix(loss=f"{float(logs.get('loss', float('nan'))):.3f}")

        def on_train_end(self, logs=None):
            self.bar.close()

    return Progress()


def fit(model, x, y, batch_size: int, epochs: int = 1, desc: str = "training", seed: int = 0) -> TrainingLog:
    """model.fit with shuffled fixed-size batches and a progress bar. Fine for a non-private model; a DP
    model trained this way does not get the Poisson-sampling epsilon (`spent_epsilon` says so)."""
    tf = _tf()
    per_epoch = math.ceil(len(x) / batch_size)
    tf.keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[_progress_callback(per_epoch * epochs, desc)])
    sizes = ([batch_size] * (len(x) // batch_size) + ([len(x) % batch_size] if len(x) % batch_size else [])) * epochs
    return TrainingLog(n=len(x), batch_size=batch_size, epochs=epochs, sampling="shuffled", steps=per_epoch * epochs,
                       seconds=time.perf_counter() - start, batch_sizes=sizes)


def padded_size(n: int, batch_size: int, spread: float = 4.0, multiple: int = 8) -> int:
    """A fixed batch shape for Poisson sampling: the expected size plus `spread` standard deviations,
    rounded up to a multiple of 8. Larger batches (about 3 in 100,000 at 4 deviations) get their own shape."""
    q = batch_size / n
    top = batch_size + spread * math.sqrt(n * q * (1 - q))
    return int(math.ceil(top / multiple) * multiple)


def poisson_batches(n: int, batch_size: int, steps: int, seed: int = 0):
    """Yield `steps` index arrays, each example included independently with probability batch_size / n:
    the sampling that DP-SGD's amplification-by-subsampling analysis assumes."""
    import numpy as np

    if not 0 < batch_size <= n:
        raise ValueError(f"need 0 < batch_size <= n, got batch_size={batch_size!r}, n={n!r}.")
    rng = np.random.default_rng(seed)
    q = batch_size / n
    for _ in range(steps):
        yield np.flatnonzero(rng.random(n) < q)


def poisson_fit(model, x, y, batch_size: int, epochs: float = 1, desc: str = "DP-SGD, Poisson sampling",
                seed: int = 0) -> TrainingLog:
    """Train `model` for steps_for(n, batch_size, epochs) steps, each on a Poisson-sampled batch.

    Keras wants one batch shape, so each batch is padded to `padded_size` with examples of weight 0
    (TF Privacy's fast clipping applies weights before clipping, so a padded example contributes
    nothing). The DP model divides its clipped sum plus noise by the padded size; the learning rate is
    scaled by padded / batch_size so that each step equals (sum + noise) / batch_size, as in Opacus."""
    import numpy as np
    from tqdm.auto import tqdm

    tf = _tf()
    x, y = np.asarray(x), np.asarray(y)
    n = len(x)
    steps = steps_for(n, batch_size, epochs)
    shape = padded_size(n, batch_size)
    lr = float(tf.keras.backend.get_value(model.optimizer.learning_rate))
    tf.keras.utils.set_random_seed(seed)
    sizes, current = [], None
    start = time.perf_counter()
    try:
        for idx in tqdm(poisson_batches(n, batch_size, steps, seed), total=steps, desc=desc, unit="step"):
            size = shape if len(idx) <= shape else int(math.ceil(len(idx) / 8) * 8)
            if size != current:
                model.optimizer.learning_rate.assign(lr * size / batch_size)
                current = size
            pad = np.zeros(size - len(idx), dtype=np.int64)
            take = np.r_[idx, pad]
            weights = np.r_[np.ones(len(idx)), np.zeros(len(pad))].astype("float32")
            model.train_on_batch(x[take], y[take], sample_weight=weights)
            sizes.append(len(idx))
    finally:
        model.optimizer.learning_rate.assign(lr)
    return TrainingLog(n=n, batch_size=batch_size, epochs=epochs, sampling="poisson", steps=steps,
                       seconds=time.perf_counter() - start, batch_sizes=sizes, padded_to=shape)


def batch_size_spread(log: TrainingLog) -> float:
    """The standard deviation of the logged batch sizes over the one Poisson sampling implies,
    sqrt(n q (1 - q)): near 1 for Poisson sampling, 0 (or far from 1) for fixed-size batches."""
    import numpy as np

    q = log.sample_rate
    return float(np.std(log.batch_sizes) / math.sqrt(log.n * q * (1 - q)))


def spent_epsilon(log: TrainingLog, noise_multiplier: float, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the training the log records (per-example clipping, noise multiplier sigma).

    Poisson sampling: the subsampled Gaussian over the steps actually taken (dp_accounting, "rdp" or
    "pld"). Shuffled fixed-size batches: the Poisson analysis does not apply, and the figure returned
    is TF Privacy's bound for data seen once per epoch in any order (no amplification by sampling)."""
    import dp_accounting

    if log.sampling == "shuffled":
        return tf_privacy_statement(log.n, log.batch_size, log.epochs, noise_multiplier, delta, False)[1]
    if log.sampling != "poisson":
        raise ValueError(f"unknown sampling {log.sampling!r} in the training log.")
    _check_accounting_args(log.n, log.batch_size, 1, noise_multiplier, delta)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(log.sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), log.steps)
    return _epsilon_of(event, delta, accountant)


def accuracy(model, x, y) -> float:
    """Test accuracy (fraction of correct top-1 predictions)."""
    import numpy as np

    logits = model.predict(x, batch_size=2000, verbose=0)
    return float((np.argmax(logits, axis=1) == np.asarray(y)).mean())


def seconds_per_example(model, x, y, batch_size: int, steps: int = 2) -> float:
    """Wall seconds per training example: one warm-up step (tracing), then `steps` timed steps."""
    if len(x) < batch_size * (steps + 1):
        raise ValueError(f"need {batch_size * (steps + 1)} examples for 1 warm-up + {steps} timed steps of "
                         f"{batch_size}, got {len(x)}.")
    model.train_on_batch(x[:batch_size], y[:batch_size])
    start = time.perf_counter()
    for i in range(1, steps + 1):
        model.train_on_batch(x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size])
    return (time.perf_counter() - start) / (steps * batch_size)


# ---------------------------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------------------------

def _check_accounting_args(n, batch_size, epochs, noise_multiplier, delta):
    if not (isinstance(n, int) and isinstance(batch_size, int)) or n < 1 or not 0 < batch_size <= n:
        raise ValueError(f"need whole numbers 0 < batch_size <= n, got batch_size={batch_size!r}, n={n!r}.")
    if not epochs > 0:
        raise ValueError(f"epochs must be positive, got {epochs!r}.")
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be positive for a finite epsilon, got {noise_multiplier!r}.")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}; 1e-5 (below 1/n) is usual for MNIST.")


def steps_for(n: int, batch_size: int, epochs: float) -> int:
    """Training steps, counted as TF Privacy counts them: ceil(epochs * n / batch_size)."""
    return int(math.ceil(epochs * n / batch_size))


def dp_sgd_event(n: int, batch_size: int, epochs: float, noise_multiplier: float, num_microbatches: int | None = None):
    """The dp_accounting event of DP-SGD with Poisson sampling (rate batch_size / n).

    With microbatches of more than one example the sensitivity doubles under add-or-remove-one
    adjacency (one example can turn a microbatch's clipped gradient into another vector of norm C,
    a change of up to 2C, while the noise stays sigma * C), so the effective noise multiplier halves.
    """
    import dp_accounting

    microbatches = num_microbatches or batch_size
    if batch_size % microbatches:
        raise ValueError(f"num_microbatches ({microbatches}) must divide batch_size ({batch_size}).")
    sigma = noise_multiplier / 2 if batch_size // microbatches > 1 else noise_multiplier
    step = dp_accounting.PoissonSampledDpEvent(batch_size / n, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(step, steps_for(n, batch_size, epochs))


def _epsilon_of(event, delta: float, accountant: str) -> float:
    """Epsilon of a dp_accounting event with the named accountant ("rdp", as TF Privacy, or "pld")."""
    import dp_accounting

    if accountant == "rdp":
        acc = dp_accounting.rdp.RdpAccountant()
    elif accountant == "pld":
        acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    else:
        raise ValueError(f"accountant {accountant!r} is unknown: use 'rdp' or 'pld'.")
    return float(acc.compose(event).get_epsilon(delta))


def dp_sgd_epsilon(n: int, batch_size: int, epochs: float, noise_multiplier: float, delta: float,
                   num_microbatches: int | None = None, accountant: str = "rdp") -> float:
    """Epsilon of Poisson-sampled DP-SGD from dp_accounting ("rdp", as TF Privacy, or "pld")."""
    _check_accounting_args(n, batch_size, epochs, noise_multiplier, delta)
    event = dp_sgd_event(n, batch_size, epochs, noise_multiplier, num_microbatches)
    return _epsilon_of(event, delta, accountant)


def noise_for_epsilon(target_epsilon: float, n: int, batch_size: int, epochs: float, delta: float,
                      num_microbatches: int | None = None) -> float:
    """The smallest noise multiplier whose RDP epsilon (Poisson sampling) is at most target_epsilon,
    found by dp_accounting's calibration."""
    import dp_accounting

    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be positive, got {target_epsilon!r}.")
    _check_accounting_args(n, batch_size, epochs, 1.0, delta)
    sigma = dp_accounting.calibrate_dp_mechanism(
        dp_accounting.rdp.RdpAccountant,
        lambda s: dp_sgd_event(n, batch_size, epochs, s, num_microbatches),
        target_epsilon, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(0.3, 30.0), tol=1e-3)
    return float(sigma)


_STATEMENT_NUMBERS = re.compile(r"Epsilon with each example occurring once per epoch:\s+([0-9.]+|inf)\s+"
                                r"Epsilon assuming Poisson sampling \(\*\):\s+([0-9.]+|inf)")


def tf_privacy_statement(n: int, batch_size: int, epochs: float, noise_multiplier: float, delta: float,
                         used_microbatching: bool) -> tuple[str, float, float]:
    """TF Privacy's `compute_dp_sgd_privacy_statement`: (its text, epsilon for data seen once per
    epoch in any order, epsilon assuming Poisson sampling)."""
    _tf()  # TF Privacy imports TensorFlow: make sure it comes up with Keras 2
    from tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib import compute_dp_sgd_privacy_statement

    _check_accounting_args(n, batch_size, epochs, noise_multiplier, delta)
    text = compute_dp_sgd_privacy_statement(number_of_examples=n, batch_size=batch_size, num_epochs=epochs,
                                            noise_multiplier=noise_multiplier, delta=delta,
                                            used_microbatching=used_microbatching)
    found = _STATEMENT_NUMBERS.search(text)
    if not found:
        raise RuntimeError("TF Privacy's privacy statement no longer has the expected wording; read the numbers "
                           "from this text by hand:\n" + text)
    return text, float(found.group(1)), float(found.group(2))


def deprecated_epsilon(n: int, batch_size: int, epochs: float, noise_multiplier: float, delta: float) -> float:
    """TF Privacy's deprecated `compute_dp_sgd_privacy` (it ignores microbatching)."""
    import logging

    _tf()
    from tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib import compute_dp_sgd_privacy

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # its deprecation warning is what the lab explains
    try:
        eps, _ = compute_dp_sgd_privacy(n, batch_size, noise_multiplier, epochs, delta)
    finally:
        absl_logger.setLevel(level)
    return float(eps)


def opacus_epsilon(n: int, batch_size: int, epochs: float, noise_multiplier: float, delta: float,
                   accountant: str = "rdp") -> float:
    """Epsilon from Opacus' accountants ("rdp" or "prv") for the same sampling rate, noise and steps."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    _check_accounting_args(n, batch_size, epochs, noise_multiplier, delta)
    classes = {"rdp": RDPAccountant, "prv": PRVAccountant}
    if accountant not in classes:
        raise ValueError(f"accountant {accountant!r} is unknown: use 'rdp' or 'prv'.")
    acc = classes[accountant]()
    acc.history = [(noise_multiplier, batch_size / n, steps_for(n, batch_size, epochs))]
    return float(acc.get_epsilon(delta))


def accounting_table(n: int, batch_size: int, epochs: float, noise_multiplier: float, delta: float,
                     num_microbatches: int | None = None):
    """One row per library and accountant for the same (sampling rate, noise multiplier, steps,
    delta): a pandas DataFrame with columns library, accountant, sampling assumption, epsilon."""
    import pandas as pd

    microbatching = bool(num_microbatches) and batch_size // num_microbatches > 1
    _, eps_shuffled, eps_poisson = tf_privacy_statement(n, batch_size, epochs, noise_multiplier, delta, microbatching)
    rows = [
        ("TF Privacy statement", "RDP", "Poisson sampling", eps_poisson),
        ("TF Privacy statement", "RDP", "each example once per epoch, any order (no amplification)", eps_shuffled),
        ("TF Privacy, deprecated compute_dp_sgd_privacy", "RDP", "Poisson; ignores microbatching",
         deprecated_epsilon(n, batch_size, epochs, noise_multiplier, delta)),
        ("dp_accounting", "RDP", "Poisson sampling",
         dp_sgd_epsilon(n, batch_size, epochs, noise_multiplier, delta, num_microbatches, "rdp")),
        ("dp_accounting", "PLD", "Poisson sampling",
         dp_sgd_epsilon(n, batch_size, epochs, noise_multiplier, delta, num_microbatches, "pld")),
    ]
    if not microbatching:  # Opacus clips per example: no microbatches to account for
        rows += [("Opacus", "RDP", "Poisson sampling", opacus_epsilon(n, batch_size, epochs, noise_multiplier, delta)),
                 ("Opacus", "PRV", "Poisson sampling",
                  opacus_epsilon(n, batch_size, epochs, noise_multiplier, delta, "prv"))]
    return pd.DataFrame(rows, columns=["library", "accountant", "sampling assumption", "epsilon"])
