"""labkit.check.fgsm_tf and fgsm_random_start_tf (lab 01b): the right answer passes, each typical
mistake is named with its fix. TensorFlow runs in one fresh interpreter with Keras 3 (other tests
choose Keras 2 for TF Privacy, and the two must not meet in one process); each mistake is then its
own test, reading that run's verdicts."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(r'''
    import json
    from labkit import keras_models
    tf, keras = keras_models.setup_keras(0)
    from labkit import attacks_tf, check
    from labkit.check import ExerciseFailed

    def ce(y, logits):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))

    def fgsm_variant(step=lambda x, g, eps: x + eps * tf.sign(g), clip=True, loss=ce, watch=True, labels=None):
        def fgsm(model, x, y, eps):
            x = tf.convert_to_tensor(x)
            with tf.GradientTape() as tape:
                if watch:
                    tape.watch(x)
                target = y if labels is None else labels(model, x)
                value = loss(target, model(x, training=False))
            grad = tape.gradient(value, x)
            out = step(x, grad, eps)
            return tf.clip_by_value(out, 0.0, 1.0) if clip else out
        return fgsm

    def todo(model, x, y, eps):
        raise NotImplementedError("TODO")

    FGSM = {
        "right": fgsm_variant(),
        "numpy_out": lambda m, x, y, e: fgsm_variant()(m, x, y, e).numpy(),
        "no_clip": fgsm_variant(clip=False),
        "no_sign": fgsm_variant(step=lambda x, g, eps: x + eps * g),
        "descent": fgsm_variant(step=lambda x, g, eps: x - eps * tf.sign(g)),
        "probabilities": fgsm_variant(loss=lambda y, l: tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, l))),
        "double_softmax": fgsm_variant(loss=lambda y, l: ce(y, tf.nn.softmax(l))),
        "no_eps": fgsm_variant(step=lambda x, g, eps: x + tf.sign(g)),
        "no_eps_no_clip": fgsm_variant(step=lambda x, g, eps: x + tf.sign(g), clip=False),
        "fixed_step": fgsm_variant(step=lambda x, g, eps: x + 0.1 * tf.sign(g)),
        "half_eps": fgsm_variant(step=lambda x, g, eps: x + 0.5 * eps * tf.sign(g)),
        "no_watch": fgsm_variant(watch=False),
        "predicted_labels": fgsm_variant(labels=lambda m, x: tf.argmax(m(x), 1)),
        "returns_none": lambda m, x, y, e: None,
        "perturbation": lambda m, x, y, e: fgsm_variant()(m, x, y, e) - x,
        "todo": todo,
        "reference": lambda m, x, y, e: attacks_tf.fgsm_reference(m, x, e, y=y),
        "cleverhans": lambda m, x, y, e: __import__("cleverhans.tf2.attacks.fast_gradient_method",
                                                     fromlist=["f"]).fast_gradient_method(m, x, e, float("inf"), clip_min=0.0, clip_max=1.0, y=y),
        "wrong_signature": lambda m, x, eps: x,
    }

    def rs_variant(start="uniform", sign=True, project=True, use_alpha=True, descend=False, grad_at_x=False, fixed=False):
        def fgsm_random_start(model, x, y, eps, alpha):
            x = tf.convert_to_tensor(x)
            shape = tf.shape(x)
            if start == "uniform" and fixed:
                d = tf.random.stateless_uniform(shape, (1, 2), -eps, eps)
            elif start == "uniform":
                d = tf.random.uniform(shape, -eps, eps)
            elif start == "up":
                d = tf.random.uniform(shape, 0.0, eps)
            elif start == "normal":
                d = tf.random.normal(shape) * eps
            else:
                d = tf.zeros_like(x)
            d = tf.clip_by_value(x + d, 0.0, 1.0) - x
            with tf.GradientTape() as tape:
                tape.watch(d)
                value = ce(y, model(x if grad_at_x else x + d, training=False))
            g = tape.gradient(value, d)
            step = (alpha if use_alpha else eps) * (tf.sign(g) if sign else g)
            d = d - step if descend else d + step
            if project:
                d = tf.clip_by_value(d, -eps, eps)
            return tf.clip_by_value(x + d, 0.0, 1.0)
        return fgsm_random_start

    RS = {
        "right": rs_variant(),
        "start_up_only": rs_variant(start="up"),
        "gaussian_start": rs_variant(start="normal"),
        "no_start": rs_variant(start="none"),
        "no_sign": rs_variant(sign=False),
        "no_projection": rs_variant(project=False),
        "eps_step": rs_variant(use_alpha=False),
        "descent": rs_variant(descend=True),
        "gradient_at_x": rs_variant(grad_at_x=True),
        "same_start_every_call": rs_variant(fixed=True),
        "reference": lambda m, x, y, e, a: attacks_tf.fgsm_random_start(m, x, y, e, a),
    }

    out = {}
    for group, cases, run in (("fgsm", FGSM, check.fgsm_tf), ("rs", RS, check.fgsm_random_start_tf)):
        for name, fn in cases.items():
            try:
                run(fn)
                out[f"{group}:{name}"] = "PASS"
            except ExerciseFailed as e:
                out[f"{group}:{name}"] = e.sentence
    # a check leaves the caller's random numbers alone
    keras.utils.set_random_seed(7)
    a = float(tf.random.uniform(()))
    keras.utils.set_random_seed(7)
    check.fgsm_tf(FGSM["right"])
    out["rng_untouched"] = a == float(tf.random.uniform(()))
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def verdicts():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0", LABKIT_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=400)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("case", ["fgsm:right", "fgsm:numpy_out", "rs:right"])
def test_the_right_answer_passes(verdicts, case):
    assert verdicts[case] == "PASS"


@pytest.mark.parametrize("case, words", [
    ("fgsm:no_clip", ["not clipped", "tf.clip_by_value"]),
    ("fgsm:no_sign", ["gradient itself instead of its sign", "tf.sign(grad)"]),
    ("fgsm:descent", ["stepped down the loss", "x + eps * tf.sign(grad)"]),
    ("fgsm:probabilities", ["treated them as probabilities", "from_logits=True"]),
    ("fgsm:double_softmax", ["softmax twice", "from_logits=True"]),
    ("fgsm:no_eps", ["forgot eps", "eps * tf.sign(grad)"]),
    ("fgsm:no_eps_no_clip", ["forgot eps"]),
    ("fgsm:fixed_step", ["0.100", "eps"]),
    ("fgsm:half_eps", ["0.100", "extra factor"]),
    ("fgsm:no_watch", ["tape.gradient returned None", "tape.watch"]),
    ("fgsm:predicted_labels", ["predicted labels", "true labels y"]),
    ("fgsm:returns_none", ["returned None", "return x_adv"]),
    ("fgsm:perturbation", ["returned the perturbation"]),
    ("fgsm:todo", ["still TODO"]),
    ("fgsm:reference", ["kit's own answer", "labkit.attacks_tf.fgsm_reference"]),
    ("fgsm:cleverhans", ["kit's own answer", "cleverhans"]),
    ("fgsm:wrong_signature", ["signature", "fgsm(model, x, y, eps)"]),
    ("rs:start_up_only", ["only goes up", "tf.random.uniform"]),
    ("rs:gaussian_start", ["leaves the eps-ball", "tf.random.normal"]),
    ("rs:no_start", ["plain FGSM", "no random start"]),
    ("rs:no_sign", ["gradient itself instead of its sign"]),
    ("rs:no_projection", ["larger than eps", "project delta back"]),
    ("rs:eps_step", ["instead of alpha"]),
    ("rs:descent", ["wrong direction", "delta + alpha * tf.sign(grad)"]),
    ("rs:gradient_at_x", ["tape.gradient returned None", "model(x + delta)"]),
    ("rs:same_start_every_call", ["same x_adv", "afresh on every call"]),
    ("rs:reference", ["kit's own answer", "labkit.attacks_tf.fgsm_random_start"]),
])
def test_each_mistake_is_named_with_its_fix(verdicts, case, words):
    sentence = verdicts[case]
    assert sentence != "PASS", f"{case} passed the check"
    for word in words:
        assert word in sentence, f"{case}: {word!r} not in {sentence!r}"


def test_a_check_leaves_the_callers_random_numbers_alone(verdicts):
    assert verdicts["rng_untouched"] is True
