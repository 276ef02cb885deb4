"""labkit.models and labkit.train on a tiny synthetic task (no dataset files needed)."""
import numpy as np
import pytest
import torch

from labkit import models, train


def toy_digits(n=600, seed=0):
    """10 classes: a bright 7x7 square at one of 10 grid positions, plus a little noise (uint8)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 4)
        x[i, 2 + 8 * r : 9 + 8 * r, 1 + 7 * c : 8 + 7 * c] = 255
    return x, y.astype(np.int64)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, y = toy_digits()
    model = models.SmallCNN()
    history = train.fit(model, x, y, epochs=2, batch_size=64, progress=False, verbose=False)
    return model, x, y, history


def test_small_cnn_shape_and_size():
    model = models.SmallCNN()
    assert 400_000 < models.count_parameters(model) < 440_000
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10)


def test_small_cnn_rejects_missing_channel_dimension():
    with pytest.raises(ValueError, match="to_tensors"):
        models.SmallCNN()(torch.rand(5, 28, 28))


def test_small_cnn_rejects_bad_image_size():
    with pytest.raises(ValueError, match="multiple of 4"):
        models.SmallCNN(image_size=30)


def test_build_registry():
    assert isinstance(models.build("small_cnn"), models.SmallCNN)
    assert models.build("small_cnn", num_classes=3)(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    with pytest.raises(KeyError, match="small_cnn"):
        models.build("no_such_model")
    with pytest.raises(ValueError, match="already registered"):
        models.register("small_cnn")(object)


def test_to_tensors_scales_and_adds_channel():
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    xt, yt = train.to_tensors(x, np.array([3]))
    assert xt.shape == (1, 1, 2, 2) and xt.dtype == torch.float32
    assert torch.allclose(xt.flatten(), torch.tensor([0.0, 1.0, 0.2, 0.4]))
    assert yt.dtype == torch.int64 and yt.tolist() == [3]
    assert train.to_tensors(x).shape == (1, 1, 2, 2)


def test_to_tensors_channels_last_and_floats():
    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    xt = train.to_tensors(x)
    assert xt.shape == (4, 3, 8, 8)
    assert torch.allclose(xt[1, 2], torch.from_numpy(x[1, :, :, 2]))


@pytest.mark.parametrize("bad, error, words", [
    (np.full((2, 4, 4), 2.0), ValueError, "scaled to \\[0, 1\\]"),
    (np.zeros((2, 4, 4), dtype=np.int32), TypeError, "uint8"),
    (np.zeros((4, 4), dtype=np.uint8), ValueError, "shaped"),
])
def test_to_tensors_rejects_bad_images(bad, error, words):
    with pytest.raises(error, match=words):
        train.to_tensors(bad)


def test_to_tensors_rejects_label_count_mismatch():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        train.to_tensors(np.zeros((3, 4, 4), np.uint8), np.array([1, 2]))


def test_make_loader_order_follows_seed():
    x, y = toy_digits(100)
    first = lambda seed: next(iter(train.make_loader(x, y, 10, shuffle=True, seed=seed)))[1].tolist()  # noqa: E731
    assert first(1) == first(1)
    assert first(1) != first(2)
    unshuffled = next(iter(train.make_loader(x, y, 10, shuffle=False)))[1]
    assert unshuffled.tolist() == y[:10].tolist()


def test_fit_learns_the_toy_task(trained):
    model, x, y, history = trained
    assert len(history) == 2 and history[-1]["loss"] < history[0]["loss"]
    xv, yv = toy_digits(300, seed=1)
    assert train.evaluate(model, xv, yv, progress=False) > 0.9


def test_evaluate_restores_mode_and_applies_attack(trained):
    model, x, y, _ = trained
    model.train()
    clean = train.evaluate(model, x, y, progress=False)
    assert model.training, "evaluate must restore the model's mode"
    blank = train.evaluate(model, x, y, attack=lambda m, xb, yb: torch.zeros_like(xb), progress=False)
    assert 0.0 <= blank <= 0.3 < clean <= 1.0
    xt, yt = train.to_tensors(x, y)
    assert train.evaluate(model, xt, yt, progress=False) == pytest.approx(clean)
    assert (train.predict(model, x) == y).mean() == pytest.approx(clean)


def test_train_epoch_uses_perturb_once_per_batch():
    x, y = toy_digits(200)
    model = models.SmallCNN()
    loader = train.make_loader(x, y, 50, seed=0)
    seen = []

    def perturb(m, xb, yb):
        seen.append(len(xb))
        m.eval()  # train_epoch must switch back to training mode itself
        return torch.zeros_like(xb).requires_grad_(True)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train.train_epoch(model, loader, opt, perturb=perturb, progress=False)
    assert seen == [50, 50, 50, 50]
    assert model.training
    assert set(stats) == {"loss", "accuracy"} and 0 <= stats["accuracy"] <= 1


def test_train_epoch_trains_on_the_perturbed_batch():
    """With every batch replaced by blank images, the model can only learn the majority class."""
    x, y = toy_digits(400)
    torch.manual_seed(0)
    model = models.SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = train.make_loader(x, y, 50, seed=0)
    for _ in range(2):
        train.train_epoch(model, loader, opt, perturb=lambda m, xb, yb: torch.zeros_like(xb), progress=False)
    assert train.evaluate(model, x, y, progress=False) < 0.3


def test_train_epoch_rejects_non_tensor_perturbation():
    x, y = toy_digits(20)
    model = models.SmallCNN()
    loader = train.make_loader(x, y, 10)
    with pytest.raises(TypeError, match="perturb must return a tensor"):
        train.train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1),
                          perturb=lambda m, xb, yb: xb.numpy(), progress=False)


def test_ramp():
    ramp = train.Ramp(end=0.3, steps=3)
    assert [round(ramp(), 6) for _ in range(5)] == [0.1, 0.2, 0.3, 0.3, 0.3]
    assert train.Ramp(end=0.3, steps=0)() == 0.3
    with pytest.raises(ValueError):
        train.Ramp(end=0.3, steps=-1)


def test_triangle_schedule_rises_then_falls():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = train.triangle_schedule(opt, total_steps=10, peak_at=0.4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.25) and max(lrs) == pytest.approx(1.0) and lrs.index(1.0) == 3
    assert lrs[-1] == pytest.approx(1 / 7) and all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    with pytest.raises(ValueError):
        train.triangle_schedule(opt, total_steps=0)


def test_fit_rejects_unknown_schedule():
    x, y = toy_digits(20)
    with pytest.raises(ValueError, match="Unknown schedule"):
        train.fit(models.SmallCNN(), x, y, schedule="cosine", progress=False, verbose=False)
