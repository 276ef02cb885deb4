"""The pinned environment: the parts of each library the labs use import and work offline.

Each check runs in a fresh interpreter, as a notebook kernel would, so that import-order and
environment-variable traps (Keras 2 vs 3, tensorflow_privacy's broken __init__) show up here.
"""
import os
import subprocess
import sys
import textwrap

import pytest


def _run(code: str, **extra_env) -> str:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", **extra_env}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_tensorflow_privacy_runs_with_keras_2():
    out = _run("""
        import sys
        sys.skip_tf_privacy_import = True  # its __init__ imports the removed tensorflow_estimator
        import tensorflow as tf
        from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import DPKerasSGDOptimizer
        from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib
        import dp_accounting
        assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__  # Keras 2, not Keras 3
        opt = DPKerasSGDOptimizer(l2_norm_clip=1.0, noise_multiplier=1.1, num_microbatches=4, learning_rate=0.1)
        model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=tf.losses.Reduction.NONE)
        model.compile(optimizer=opt, loss=loss)
        model.fit(tf.random.normal((8, 3)), tf.zeros(8, dtype=tf.int32), batch_size=4, epochs=1, verbose=0)
        event = dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(250 / 60000, dp_accounting.GaussianDpEvent(1.1)), 240 * 15)
        eps = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
        print(round(eps, 2))
    """, TF_USE_LEGACY_KERAS="1")
    assert 1.0 < float(out.strip()) < 3.0


def test_opacus_makes_a_model_private():
    out = _run("""
        import torch
        from opacus import PrivacyEngine
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
        loader = torch.utils.data.DataLoader(data, batch_size=16)
        engine = PrivacyEngine()
        model, opt, loader = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                                 data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0)
        for x, y in loader:
            opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
        print(engine.get_epsilon(1e-5))
    """)
    assert float(out.strip()) > 0


def test_cleverhans_and_art_attack_a_torch_model():
    _run("""
        import numpy as np, torch
        from cleverhans.torch.attacks.fast_gradient_method import fast_gradient_method
        from art.estimators.classification import PyTorchClassifier
        from art.attacks.evasion import FastGradientMethod
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        x = torch.rand(5, 1, 4, 4)
        adv = fast_gradient_method(model, x, 0.1, np.inf, clip_min=0.0, clip_max=1.0)
        assert (adv - x).abs().max() <= 0.1 + 1e-6 and (adv - x).abs().max() > 0
        clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 4, 4), nb_classes=3,
                                clip_values=(0.0, 1.0))
        art_adv = FastGradientMethod(clf, eps=0.1).generate(x.numpy())
        assert np.abs(art_adv - x.numpy()).max() <= 0.1 + 1e-6
    """)


def test_seeding_covers_tensorflow():
    out = _run("""
        import tensorflow as tf
        import labkit
        labkit.seed_everything(3)
        first = tf.random.uniform((3,)).numpy().tolist()
        labkit.seed_everything(3)
        print(first == tf.random.uniform((3,)).numpy().tolist())
    """, TF_USE_LEGACY_KERAS="1")
    assert out.strip() == "True"


@pytest.mark.parametrize("module", ["fastapi", "uvicorn", "httpx", "flwr", "sklearn", "matplotlib", "pooch", "nbval"])
def test_lab_libraries_import(module):
    _run(f"import {module}")
