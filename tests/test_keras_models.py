"""labkit.keras_models and labkit.attacks_tf (lab 01b). The set-up's refusals and input errors run
here (they stop before TensorFlow is imported); everything that needs TensorFlow runs in one fresh
interpreter with Keras 3, since other tests choose Keras 2 for TF Privacy."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from labkit import keras_models


@pytest.mark.parametrize("value", ["1", "true"])
def test_setup_refuses_keras_2(monkeypatch, value):
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", value)
    with pytest.raises(keras_models.KerasVersionError, match="Keras 2.*TF_USE_LEGACY_KERAS"):
        keras_models.setup_keras(0)


def test_setup_refuses_another_keras_backend(monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(keras_models.KerasVersionError, match="KERAS_BACKEND='jax'.*tensorflow"):
        keras_models.setup_keras(0)


def test_to_images_scales_and_adds_the_channel():
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = keras_models.to_images(x)
    assert out.shape == (1, 2, 2, 1) and out.dtype == np.float32
    assert np.allclose(out[0, :, :, 0], [[0, 1], [0.2, 0.4]])


@pytest.mark.parametrize("x, error, words", [
    (np.zeros((2, 28, 28), np.float32), TypeError, "uint8"),
    (np.zeros((28, 28), np.uint8), ValueError, r"\(N, H, W\)"),
])
def test_to_images_names_bad_input(x, error, words):
    with pytest.raises(error, match=words):
        keras_models.to_images(x)


@pytest.mark.parametrize("make, words", [
    (lambda: keras_models.EpsilonRamp(0.3, -1), "steps >= 0"),
    (lambda: keras_models.Triangle(5e-3, 0), "total_steps >= 1"),
    (lambda: keras_models.Triangle(5e-3, 10, peak_at=1.0), "peak_at"),
])
def test_schedules_name_bad_settings(make, words):
    with pytest.raises(ValueError, match=words):
        make()


SCRIPT = textwrap.dedent(r'''
    import json
    import numpy as np
    import torch
    from labkit import keras_models
    tf, keras = keras_models.setup_keras(0)
    from labkit import attacks_tf, models, train
    out = {}
    out["tf_keras_is_keras3"] = tf.keras.__name__.startswith("keras") and keras.__version__.startswith("3.")

    # the Keras CNN is the PyTorch SmallCNN's twin, weight for weight
    out["params"] = [keras_models.count_parameters(keras_models.small_cnn()), models.count_parameters(models.SmallCNN())]
    a, b = keras_models.small_cnn(seed=5), keras_models.small_cnn(seed=5)
    out["seeded_same"] = all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))

    # schedules: the same numbers as labkit.train's triangle schedule and Ramp
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=5e-3)
    sched = train.triangle_schedule(opt, 50)
    torch_lr = []
    for _ in range(50):
        torch_lr.append(opt.param_groups[0]["lr"])
        opt.step(); sched.step()
    tri = keras_models.Triangle(5e-3, 50)
    out["triangle_gap"] = max(abs(float(tri(s)) - v) for s, v in enumerate(torch_lr))
    ramp, keras_ramp = train.Ramp(0.3, 7), keras_models.EpsilonRamp(0.3, 7)
    out["ramp_gap"] = max(abs(ramp() - keras_ramp.value(s)) for s in range(10))
    out["ramp_zero_steps"] = keras_models.EpsilonRamp(0.3, 0).value(0)

    # ART's TensorFlow DLR loss (loop over the batch) and ours (vectorised) agree
    from art.attacks.evasion import AutoProjectedGradientDescent
    model = keras_models.small_cnn(seed=1)
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    keras_models_opt = keras.optimizers.Adam(1e-3)
    for _ in range(30):  # a little training, so some labels are the top logit and some are not
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y[:48], model(x[:48], training=True)))
        keras_models_opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    art_apgd = AutoProjectedGradientDescent(attacks_tf.classifier(model), norm=np.inf, eps=0.3, eps_step=0.1,
                                            max_iter=1, loss_type="difference_logits_ratio", verbose=False)
    art_loss = art_apgd.estimator._loss_object
    logits = model(x, training=False)
    onehot = tf.one_hot(y, 10)
    art_loss.reduction = "none"
    ours = attacks_tf.dlr_loss(onehot, logits).numpy()
    out["dlr_gap"] = float(np.abs(art_loss(onehot, logits).numpy() - ours).max())
    out["dlr_mixed"] = [int((np.argmax(logits, 1) == y).sum()), int((np.argmax(logits, 1) != y).sum())]
    out["dlr_indices_gap"] = float(np.abs(attacks_tf.dlr_loss(tf.constant(y), logits).numpy() - ours).max())
    clf = attacks_tf.classifier(model, loss="dlr")
    out["dlr_in_art"] = float(abs(clf.compute_loss(x, np.eye(10)[y], reduction="mean") - ours.mean()))

    # attacks: budget, range, and they hurt a model that fits its data
    xs, ys = x[:48], y[:48]
    clean = keras_models.accuracy(model, xs, ys)
    eps = 0.1
    res = {}
    for name, fn in {
        "fgsm": lambda: np.asarray(attacks_tf.fgsm_reference(model, xs, eps, y=ys)),
        "fgsm_rs": lambda: np.asarray(attacks_tf.fgsm_random_start(model, xs, ys, eps, 1.25 * eps)),
        "pgd": lambda: attacks_tf.pgd(model, xs, ys, eps, step=0.02, steps=10, restarts=2),
        "apgd_ce": lambda: attacks_tf.apgd(model, xs, ys, eps, "ce", steps=10, restarts=1),
        "apgd_dlr": lambda: attacks_tf.apgd(model, xs, ys, eps, "dlr", steps=10, restarts=1),
        "square": lambda: attacks_tf.square(model, xs, ys, eps, queries=30),
        "pgd_cleverhans_graph": lambda: np.asarray(tf.function(lambda a, b: attacks_tf.pgd_cleverhans(
            model, a, b, eps, 2.5 * eps / 3, 3))(tf.constant(xs), tf.constant(ys))),
    }.items():
        adv = fn()
        res[name] = {"linf": float(np.abs(adv - xs).max()), "low": float(adv.min()), "high": float(adv.max()),
                     "acc": keras_models.accuracy(model, adv, ys)}
    out["attacks"], out["clean"] = res, clean
    grad_sign_check = np.asarray(attacks_tf.fgsm_reference(model, xs, eps, y=ys))
    with tf.GradientTape() as tape:
        xt = tf.constant(xs); tape.watch(xt)
        l = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(ys, model(xt, training=False)))
    by_hand = np.clip(xs + eps * np.sign(tape.gradient(l, xt).numpy()), 0, 1)
    out["fgsm_by_hand_agreement"] = float((np.abs(by_hand - grad_sign_check) <= 1e-6).mean())
    out["seeded_repeat"] = bool(np.array_equal(attacks_tf.pgd(model, xs, ys, eps, 0.02, 5, seed=3),
                                               attacks_tf.pgd(model, xs, ys, eps, 0.02, 5, seed=3)))

    # the ladder: per-image worst case over the named rungs, sizes respected
    rungs = attacks_tf.ladder_rungs(eps, pgd_steps=5, restarts=2, apgd_steps=5, apgd_restarts=1, square_queries=20)
    lad = attacks_tf.ladder(model, xs, ys, rungs, worst_of=("APGD-CE", "APGD-DLR"), worst_name="worst",
                            sizes={"Square, 20 queries": 16}, progress=False)
    both = lad.robust["APGD-CE"] & lad.robust["APGD-DLR"]
    out["ladder"] = {"names": list(lad.accuracy), "worst_is_and": bool(np.array_equal(lad.robust["worst"], both)),
                     "worst": lad.worst, "square_images": lad.images["Square, 20 queries"], "table": "worst" in lad.table()}
    try:
        attacks_tf.ladder(model, xs, ys, rungs, worst_of=("APGD-CE", "Square, 20 queries"),
                          sizes={"Square, 20 queries": 16}, progress=False)
        out["ladder_size_error"] = None
    except ValueError as e:
        out["ladder_size_error"] = str(e)
    try:
        attacks_tf.apgd(model, xs, ys, eps, "l2")
        out["loss_error"] = None
    except ValueError as e:
        out["loss_error"] = str(e)
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def measured():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0", LABKIT_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=400)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_keras_3_is_tf_keras_after_setup(measured):
    assert measured["tf_keras_is_keras3"]


def test_small_cnn_is_the_pytorch_twin(measured):
    keras_count, torch_count = measured["params"]
    assert keras_count == torch_count == 421_642
    assert measured["seeded_same"]


def test_schedules_match_lab_01s(measured):
    assert measured["triangle_gap"] < 1e-7
    assert measured["ramp_gap"] < 1e-6
    assert measured["ramp_zero_steps"] == pytest.approx(0.3)


def test_vectorised_dlr_equals_arts_dlr(measured):
    assert measured["dlr_gap"] < 1e-5
    right, wrong = measured["dlr_mixed"]
    assert right > 0 and wrong > 0  # both branches of "largest logit that is not the label" are exercised
    assert measured["dlr_indices_gap"] < 1e-6
    assert measured["dlr_in_art"] < 1e-5


@pytest.mark.parametrize("name", ["fgsm", "fgsm_rs", "pgd", "apgd_ce", "apgd_dlr", "square", "pgd_cleverhans_graph"])
def test_attacks_stay_in_budget_and_range(measured, name):
    r = measured["attacks"][name]
    assert r["linf"] <= 0.1 + 1e-6 and r["low"] >= 0.0 and r["high"] <= 1.0
    assert r["linf"] > 0.05  # they did move the images


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd_ce", "apgd_dlr", "pgd_cleverhans_graph"])
def test_white_box_attacks_hurt(measured, name):
    assert measured["attacks"][name]["acc"] < measured["clean"]


def test_iterative_attacks_beat_fgsm(measured):
    a = measured["attacks"]
    assert a["apgd_ce"]["acc"] <= a["fgsm"]["acc"] and a["pgd"]["acc"] <= a["fgsm"]["acc"]


def test_fgsm_reference_is_the_formula(measured):
    assert measured["fgsm_by_hand_agreement"] > 0.999


def test_art_attacks_repeat_with_a_seed(measured):
    assert measured["seeded_repeat"]


def test_ladder_headline_is_the_per_image_worst_case(measured):
    lad = measured["ladder"]
    assert lad["names"] == ["FGSM", "PGD-5", "PGD-5, 2 restarts", "APGD-CE", "APGD-DLR", "Square, 20 queries", "worst"]
    assert lad["worst_is_and"] and lad["square_images"] == 16 and lad["table"]


def test_ladder_and_apgd_name_bad_input(measured):
    assert "same images" in measured["ladder_size_error"]
    assert "'ce' or 'dlr'" in measured["loss_error"]
