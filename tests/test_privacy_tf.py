"""labkit.privacy_tf (accounting, the fast clipping registry function, the tanh CNN) and
labkit.check.dp_sgd_epsilon. TensorFlow parts run in one fresh interpreter (Keras 2 must be chosen
before TensorFlow is first imported, whatever other tests did)."""
import math
import os
import subprocess
import sys
import textwrap

import dp_accounting
import pytest

from labkit import check, privacy_tf


def _rdp(n, b, epochs, sigma, delta, q=None, steps=None):
    q = b / n if q is None else q
    steps = math.ceil(epochs * n / b) if steps is None else steps
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta)


def correct(n, batch_size, epochs, noise_multiplier, delta, num_microbatches):
    sigma = noise_multiplier / 2 if batch_size // num_microbatches > 1 else noise_multiplier
    return _rdp(n, batch_size, epochs, sigma, delta)


def test_microbatches_halve_the_effective_noise():
    per_example = privacy_tf.dp_sgd_epsilon(60_000, 250, 1, 1.1, 1e-5, num_microbatches=250)
    micro = privacy_tf.dp_sgd_epsilon(60_000, 250, 1, 1.1, 1e-5, num_microbatches=25)
    assert micro == pytest.approx(_rdp(60_000, 250, 1, 0.55, 1e-5))
    assert micro > 3 * per_example
    assert privacy_tf.dp_sgd_epsilon(60_000, 250, 1, 1.1, 1e-5, accountant="pld") < per_example


def test_noise_for_epsilon_meets_the_target_tightly():
    sigma = privacy_tf.noise_for_epsilon(3.0, 60_000, 512, 1, 1e-5)
    eps = privacy_tf.dp_sgd_epsilon(60_000, 512, 1, sigma, 1e-5)
    assert 2.97 <= eps <= 3.0


def test_opacus_rdp_agrees_with_dp_accounting():
    ours = privacy_tf.dp_sgd_epsilon(60_000, 512, 1, 0.7, 1e-5)
    assert privacy_tf.opacus_epsilon(60_000, 512, 1, 0.7, 1e-5) == pytest.approx(ours, rel=0.02)


@pytest.mark.parametrize("args, words", [
    ((60_000, 0, 1, 1.0, 1e-5), "batch_size"),
    ((60_000, 512, 0, 1.0, 1e-5), "epochs"),
    ((60_000, 512, 1, 0.0, 1e-5), "noise_multiplier"),
    ((60_000, 512, 1, 1.0, 1.5), "delta"),
])
def test_bad_accounting_input_is_named(args, words):
    with pytest.raises(ValueError, match=words):
        privacy_tf.dp_sgd_epsilon(*args)


def test_microbatches_must_divide_the_batch():
    with pytest.raises(ValueError, match="must divide"):
        privacy_tf.dp_sgd_epsilon(60_000, 250, 1, 1.0, 1e-5, num_microbatches=7)


def test_poisson_batches_sample_each_example_independently():
    import numpy as np

    sizes = [len(b) for b in privacy_tf.poisson_batches(10_000, 100, 400, seed=1)]
    assert abs(np.mean(sizes) - 100) < 2 and 0.8 < np.std(sizes) / np.sqrt(100 * 0.99) < 1.2
    first = next(privacy_tf.poisson_batches(10_000, 100, 1, seed=1))
    assert (np.diff(first) > 0).all()  # sorted, no repeats
    assert privacy_tf.padded_size(60_000, 512) % 8 == 0 and 512 + 4 * 22 <= privacy_tf.padded_size(60_000, 512) < 620
    with pytest.raises(ValueError, match="batch_size"):
        next(privacy_tf.poisson_batches(10, 20, 1))


def _log(sampling, sizes, n=60_000, b=512, steps=118):
    return privacy_tf.TrainingLog(n=n, batch_size=b, epochs=1, sampling=sampling, steps=steps, seconds=1.0,
                                  batch_sizes=sizes)


def test_batch_size_spread_tells_poisson_from_fixed_batches():
    import numpy as np

    poisson = [len(b) for b in privacy_tf.poisson_batches(60_000, 512, 118, seed=0)]
    assert 0.7 < privacy_tf.batch_size_spread(_log("poisson", poisson)) < 1.3
    assert privacy_tf.batch_size_spread(_log("shuffled", [512] * 118)) == 0.0
    remainder = [512] * 117 + [96]  # Keras' last partial batch
    assert privacy_tf.batch_size_spread(_log("shuffled", remainder)) > 1.5


def test_spent_epsilon_follows_the_sampling_the_log_records():
    poisson = privacy_tf.spent_epsilon(_log("poisson", []), 0.8, 1e-6)
    assert poisson == pytest.approx(privacy_tf.dp_sgd_epsilon(60_000, 512, 1, 0.8, 1e-6))
    assert privacy_tf.spent_epsilon(_log("poisson", [], steps=236), 0.8, 1e-6) > poisson  # extra steps cost
    assert privacy_tf.spent_epsilon(_log("poisson", []), 0.8, 1e-6, "pld") < poisson
    with pytest.raises(ValueError, match="unknown"):
        privacy_tf.spent_epsilon(_log("poisson", []), 0.8, 1e-6, "moments")
    with pytest.raises(ValueError, match="unknown sampling"):
        privacy_tf.spent_epsilon(_log("round robin", []), 0.8, 1e-6)


def test_check_passes_a_correct_solution():
    assert check.dp_sgd_epsilon(correct).passed


@pytest.mark.parametrize("wrong, words", [
    (lambda n, b, e, s, d, m: _rdp(n, b, e, s, d), "sensitivity doubles"),
    (lambda n, b, e, s, d, m: _rdp(n, b, e, s / 2, d), "not 2C"),
    (lambda n, b, e, s, d, m: _rdp(n, b, e, s / 2 if b // m > 1 else s, d, steps=e), "epochs"),
    (lambda n, b, e, s, d, m: _rdp(n, b, e, s / 2 if b // m > 1 else s, d, q=m / n), "sampling rate"),
    (lambda n, b, e, s, d, m: dp_accounting.rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(s / 2 if b // m > 1 else s), math.ceil(e * n / b))).get_epsilon(d),
     "PoissonSampledDpEvent"),
    (lambda n, b, e, s, d, m: None, "returned None"),
    (lambda n, b, e, s, d, m: (correct(n, b, e, s, d, m), 8), "not a tuple"),
])
def test_check_names_typical_mistakes(wrong, words):
    with pytest.raises(check.ExerciseFailed, match=words):
        check.dp_sgd_epsilon(wrong)


def test_check_says_todo():
    def todo(*args):
        raise NotImplementedError
    with pytest.raises(check.ExerciseFailed, match="still TODO"):
        check.dp_sgd_epsilon(todo)


def test_tensorflow_parts_in_a_fresh_interpreter():
    code = textwrap.dedent("""
        import numpy as np
        from labkit import privacy_tf
        tf = privacy_tf.setup_tf(0)
        # patches + Dense is the Conv2D network
        net = privacy_tf.plain_model()
        x = tf.random.uniform((16, 28, 28, 1), seed=1).numpy()
        y = np.arange(16) % 10
        conv = privacy_tf.conv_reference_model(net)
        assert np.abs(net(x).numpy() - conv(x).numpy()).max() < 1e-4
        # the kit's registry function gives the true per-example gradient norms
        from tensorflow_privacy.privacy.fast_gradient_clipping import gradient_clipping_utils
        for kind in ("kit", "tf_privacy"):
            dp = privacy_tf.dp_model(1.0, 1.0, registry=kind)
            dp.set_weights(net.get_weights())
            from tensorflow_privacy.privacy.fast_gradient_clipping import clip_grads
            loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
            norms = clip_grads.compute_gradient_norms(dp, privacy_tf.layer_registry(kind), x, y, None, loss).numpy()
            true = []
            for i in range(len(x)):
                with tf.GradientTape() as tape:
                    li = loss(y[i:i + 1], dp(x[i:i + 1]))
                g = tape.gradient(li, dp.trainable_variables)
                true.append(float(tf.linalg.global_norm(g)))
            assert np.allclose(norms, true, rtol=1e-3), (kind, norms[:3], true[:3])
        # the statement's numbers and the microbatch trap
        _, any_order, poisson = privacy_tf.tf_privacy_statement(60000, 250, 1, 1.1, 1e-5, used_microbatching=True)
        assert abs(poisson - privacy_tf.dp_sgd_epsilon(60000, 250, 1, 1.1, 1e-5, 25)) < 2e-3 and any_order > poisson
        assert privacy_tf.deprecated_epsilon(60000, 250, 1, 1.1, 1e-5) < poisson / 3
        table = privacy_tf.accounting_table(60000, 250, 1, 1.1, 1e-5, num_microbatches=25)
        assert len(table) == 5 and table.epsilon.max() == any_order  # no Opacus rows: it has no microbatches
        # a shuffled DP run gets the any-order bound, not the Poisson figure
        log = privacy_tf.TrainingLog(n=60000, batch_size=250, epochs=1, sampling="shuffled", steps=240, seconds=1.0)
        assert privacy_tf.spent_epsilon(log, 1.1, 1e-5) == privacy_tf.tf_privacy_statement(60000, 250, 1, 1.1, 1e-5, False)[1]
        # zero-weight padding with the learning rate scaled by padded / real size is the unpadded step
        a = privacy_tf.dp_model(1.0, 0.0, lr=0.1, momentum=0.0)
        b = privacy_tf.dp_model(1.0, 0.0, lr=0.1, momentum=0.0)
        b.set_weights(a.get_weights())
        a.train_on_batch(x[:10], y[:10])
        b.optimizer.learning_rate.assign(0.1 * 16 / 10)
        b.train_on_batch(np.r_[x[:10], x[:6]], np.r_[y[:10], y[:6]], sample_weight=np.r_[np.ones(10), np.zeros(6)])
        assert all(np.allclose(u, v, atol=1e-6) for u, v in zip(a.get_weights(), b.get_weights()))
        # poisson_fit: the planned steps, real batch sizes logged, learning rate restored
        c = privacy_tf.dp_model(1.0, 1.0, lr=0.2)
        xs, ys = np.concatenate([x] * 4), np.concatenate([y] * 4)
        log = privacy_tf.poisson_fit(c, xs, ys, batch_size=16, epochs=1, seed=3)
        assert log.sampling == "poisson" and log.steps == 4 == len(log.batch_sizes)
        assert log.padded_to == privacy_tf.padded_size(64, 16) and abs(float(c.optimizer.learning_rate) - 0.2) < 1e-7
        # the slice timer returns seconds per example (the DP model above took real steps)
        assert privacy_tf.seconds_per_example(dp, np.concatenate([x] * 2), np.concatenate([y] * 2), 8, 2) > 0
        print("ok")
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "TF_USE_LEGACY_KERAS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
