"""CIFAR-10 data (binary-release parser, JPEG zips, the shipped subset and how it is built), the
safetensors checkpoints, and `labkit pretrain` on a tiny run."""
import hashlib
import io
import json
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from labkit import checkpoints, cifar10, cli, datasets, models


def _binary_records(labels, rng):
    images = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    blob = b"".join(bytes([label]) + images[i].tobytes() for i, label in enumerate(labels))
    return blob, images.transpose(0, 2, 3, 1)


def _release(tmp_path, records_per_batch=4, members=None):
    rng = np.random.default_rng(0)
    expected = {"train": ([], []), "test": ([], [])}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        names = members or [m for split in ("train", "test") for m in cifar10.BINARY_MEMBERS[split]]
        for name in names:
            labels = rng.integers(0, 10, size=records_per_batch)
            blob, images = _binary_records(labels, rng)
            split = "test" if "test_batch" in name else "train"
            expected[split][0].append(images)
            expected[split][1].append(labels)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        meta = b"airplane\nautomobile\n"
        info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return buf.getvalue(), expected


def test_the_binary_parser_reads_records_channel_planes_first():
    data, expected = _release(None)
    out = cifar10.parse_binary_release(data, expect_records=4)
    for split in ("train", "test"):
        x, y = out[split]
        assert x.shape == (len(expected[split][1]) * 4, 32, 32, 3) and x.dtype == np.uint8
        assert np.array_equal(x, np.concatenate(expected[split][0]))
        assert np.array_equal(y, np.concatenate(expected[split][1]))


def test_a_record_is_label_then_red_green_blue_planes():
    red = np.full((32, 32), 200, np.uint8)
    green = np.zeros((32, 32), np.uint8)
    blue = np.arange(1024, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    x, y = cifar10.parse_binary_batch(bytes([7]) + red.tobytes() + green.tobytes() + blue.tobytes())
    assert y.tolist() == [7] and (x[0, :, :, 0] == 200).all() and (x[0, :, :, 1] == 0).all()
    assert np.array_equal(x[0, :, :, 2], blue)


@pytest.mark.parametrize("blob, words", [
    (b"\x01" * 100, "whole number"),
    (bytes([12]) + bytes(3072), "outside 0..9"),
])
def test_a_damaged_batch_is_refused(blob, words):
    with pytest.raises(cifar10.CifarFormatError, match=words):
        cifar10.parse_binary_batch(blob)


def test_the_release_is_checked_for_members_and_sizes():
    data, _ = _release(None, records_per_batch=4)
    with pytest.raises(cifar10.CifarFormatError, match="declares"):
        cifar10.parse_binary_release(data)  # the real release has 10,000 records per batch
    partial, _ = _release(None, members=cifar10.BINARY_MEMBERS["test"])
    with pytest.raises(cifar10.CifarFormatError, match="binary version"):
        cifar10.parse_binary_release(partial, splits=("train",), expect_records=4)
    with pytest.raises(cifar10.CifarFormatError, match="gzip"):
        cifar10.parse_binary_release(pickle.dumps({"data": 1}))


def test_the_binary_dataset_loads_from_labkit_data_after_its_hash(tmp_path, monkeypatch):
    data, expected = _release(tmp_path, records_per_batch=4)
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "cifar-10-binary.tar.gz").write_bytes(data)
    monkeypatch.setenv("LABKIT_DATA", str(folder))
    monkeypatch.setenv("LABKIT_OFFLINE", "1")
    with pytest.raises(datasets.DatasetCorrupted, match="sha256"):  # a synthetic archive is not the release
        datasets.load("cifar10_binary", "test")
    entry = datasets.files("cifar10_binary")[0]
    assert entry.url.startswith("https://www.cs.toronto.edu/~kriz/")
    assert entry.url_sha256 == "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"


def test_the_shipped_subset_is_stratified_and_verified():
    x, y = datasets.load("cifar10_subset", "train")
    assert x.shape == (10_000, 32, 32, 3) and np.bincount(y).tolist() == [1000] * 10
    xt, yt = datasets.load("cifar10_subset", "test")
    assert xt.shape == (2_000, 32, 32, 3) and np.bincount(yt).tolist() == [200] * 10
    assert "subset" in datasets.info("cifar10_subset")["title"]
    assert (datasets.KIT_DATA / datasets.files("cifar10_subset")[0].path).stat().st_size < 20 << 20


def _jpeg(rng, seed_pixels=None):
    arr = seed_pixels if seed_pixels is not None else rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_the_subset_builder_is_seeded_stratified_and_drops_duplicates(tmp_path):
    rng = np.random.default_rng(0)
    source = io.BytesIO()
    dup = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    with zipfile.ZipFile(source, "w") as z:
        for c in cifar10.CLASSES:
            for i in range(6):
                z.writestr(f"train/{c}/{i:04d}.jpg", _jpeg(rng, dup if (c == "cat" and i == 0) else None))
            for i in range(4):
                z.writestr(f"test/{c}/{i:04d}.jpg", _jpeg(rng, dup if (c == "cat" and i == 0) else None))
    a = cifar10.build_subset(source.getvalue(), tmp_path / "a.zip", n_train=30, n_test=30, seed=0)
    b = cifar10.build_subset(source.getvalue(), tmp_path / "b.zip", n_train=30, n_test=30, seed=0)
    assert a["sha256"] == b["sha256"]  # reproducible to the byte
    assert a["test_exact_duplicates_of_train"] == 1
    x, y = cifar10.read_jpeg_zip((tmp_path / "a.zip").read_bytes(), "test")
    assert np.bincount(y).tolist() == [3] * 10
    names = zipfile.ZipFile(tmp_path / "a.zip").namelist()
    assert "test/cat/0000.jpg" not in names  # the duplicate of a training image is never a test image
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zipfile.ZipFile(tmp_path / "a.zip").infolist())


def test_duplicates_are_found_exactly_and_nearly():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    near = np.clip(ref[3].astype(int) + 1, 0, 255).astype(np.uint8)
    cand = np.stack([ref[5], near, rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)])
    out = cifar10.duplicates_against(cand, ref, near_duplicate=8.0)
    assert out["exact"].tolist() == [True, False, False]
    assert out["near"].tolist() == [True, True, False]


# ---- checkpoints ------------------------------------------------------------------------------

def _tiny(tmp_path):
    torch.manual_seed(0)
    model = models.build("resnet20", depth=8, width=4)
    path = tmp_path / "tiny.safetensors"
    digest = checkpoints.save(model, path, "resnet20", {"depth": 8, "width": 4}, {"seed": 0})
    return model, path, digest


def test_a_checkpoint_round_trips_with_its_sidecar(tmp_path):
    model, path, digest = _tiny(tmp_path)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["sha256"] == digest == hashlib.sha256(path.read_bytes()).hexdigest() and side["seed"] == 0
    loaded = checkpoints.load_model(path, digest)
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    assert torch.equal(loaded(x), model(x))


def test_a_tampered_checkpoint_is_refused_before_it_is_read(tmp_path, monkeypatch):
    _, path, digest = _tiny(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    monkeypatch.setattr(checkpoints, "model_from_bytes", lambda *a, **k: pytest.fail("parsed a tampered file"))
    with pytest.raises(checkpoints.CheckpointCorrupted, match="sha256.*refused"):
        checkpoints.load_model(path, digest)


def test_a_pickled_checkpoint_is_never_unpickled(tmp_path, monkeypatch):
    model, _, _ = _tiny(tmp_path)
    path = tmp_path / "pickled.pt"
    torch.save(model.state_dict(), path)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # even with its own hash it is refused
    with pytest.raises(checkpoints.CheckpointError, match="pickle"):
        checkpoints.load_model(path, digest)


def test_shipped_weights_are_declared_and_verified():
    for name in ("resnet20_cifar10", "resnet20_cifar10_robust"):
        entry = next(f for f in datasets.files(name) if f.path.endswith(".safetensors"))
        side = json.loads((datasets.KIT_DATA / entry.path).with_suffix(".json").read_text())
        assert side["sha256"] == entry.sha256
        assert side["command"].startswith("labkit pretrain ") and side["seed"] == 0
        model = checkpoints.load_shipped(name)
        assert models.count_parameters(model) == 272_474


def test_resnet20_has_about_027m_parameters_and_rejects_bad_shapes():
    model = models.build("resnet20")
    assert models.count_parameters(model) == 272_474
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="N, 3, 32, 32"):
        model(torch.rand(2, 32, 32, 3))
    with pytest.raises(ValueError, match="6n\\+2"):
        models.build("resnet20", depth=21)


def test_the_pretrain_command_trains_a_tiny_model_and_records_it(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    args = ["pretrain", str(out), "--dataset", "cifar10_subset", "--depth", "8", "--width", "4", "--epochs", "1",
            "--train-limit", "300", "--test-limit", "60", "--val-size", "40", "--val-pgd", "20", "--test-pgd", "20",
            "--no-progress", "--threads", "1"]
    assert cli.main(args) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["command"] == "labkit pretrain " + " ".join(args[1:])
    assert side["data"]["train_images"] == 260 and side["data"]["validation_images"] == 40
    assert 0 <= side["measured"]["test_clean_accuracy"] <= 1 and len(side["history"]) == 1
    assert side["data"]["files_sha256"] == {f.path: f.sha256 for f in datasets.files("cifar10_subset")}
    robust = tmp_path / "r.safetensors"
    assert cli.main(["pretrain", str(robust), "--dataset", "cifar10_subset", "--init", str(out), "--adv", "fgsm_rs",
                     "--epochs", "1", "--train-limit", "200", "--test-limit", "40", "--val-size", "40",
                     "--val-pgd", "20", "--test-pgd", "20", "--no-progress", "--threads", "1"]) == 0
    side = json.loads(robust.with_suffix(".json").read_text())
    assert side["recipe"]["init"]["sha256"] == checkpoints.read_sidecar(out)["sha256"]
    assert side["recipe"]["adversarial"]["eps"] == "8/255" and "val_pgd7" in side["history"][0]
    assert checkpoints.load_model(robust, side["sha256"]) is not None
