import functools
import hashlib
import http.server
import shutil
import threading

import numpy as np
import pytest

from labkit import datasets


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _own_data_dir(tmp_path, monkeypatch, manifest: str):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / "MANIFEST.toml").write_text(manifest)
    monkeypatch.setenv("LABKIT_DATA", str(folder))
    return folder


def test_mnist_loads_verified_arrays():
    x, y = datasets.load("mnist", split="train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    x_test, y_test = datasets.load("mnist", split="test")
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)


def test_every_shipped_dataset_is_present_and_verified():
    for name in datasets.names():
        if datasets.info(name).get("shipped"):
            assert all(state == "ok" for _, state, _ in datasets.status(name)), name


@pytest.mark.parametrize("name, split, size, positives", [
    ("sms_spam", "all", 5574, 747),
    ("rt_polarity", "all", 10662, 5331),
    ("german_credit", "all", 1000, 300),
    ("taiwan_credit", "all", 30000, 6636),
])
def test_text_and_table_loaders(name, split, size, positives):
    x, y = datasets.load(name, split=split)
    assert len(x) == size and int(y.sum()) == positives
    x_train, y_train = datasets.load(name, split="train")
    x_test, y_test = datasets.load(name, split="test")
    assert len(x_train) + len(x_test) == size
    assert abs(y_test.mean() - positives / size) < 0.01  # stratified
    assert datasets.load(name, split="test")[1].tolist() == y_test.tolist()  # fixed split


def test_table_loaders_drop_the_target_and_the_id():
    frame, _ = datasets.load("taiwan_credit", split="all")
    assert "class" not in frame.columns and "ID" not in frame.columns and frame.shape[1] == 23


def test_pneumoniamnist_has_three_splits():
    sizes = {split: datasets.load("pneumoniamnist", split=split)[0].shape[0] for split in ("train", "val", "test")}
    assert sizes == {"train": 2428, "val": 270, "test": 468}


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(datasets.UnknownDataset) as err:
        datasets.load("imagenet")
    assert "imagenet" in str(err.value) and "mnist" in str(err.value)


def test_unknown_split_is_explained():
    with pytest.raises(ValueError, match="no split 'validation'.*train, test"):
        datasets.load("mnist", split="validation")


def test_corrupted_file_names_the_file_and_the_fix(tmp_path, monkeypatch):
    folder = _own_data_dir(tmp_path, monkeypatch, (datasets.KIT_DATA / "MANIFEST.toml").read_text())
    truncated = folder / "mnist.npz"
    truncated.write_bytes((datasets.KIT_DATA / "mnist.npz").read_bytes()[:100_000])
    with pytest.raises(datasets.DatasetCorrupted) as err:
        datasets.load("mnist")
    message = str(err.value)
    assert str(truncated) in message and "corrupted or truncated" in message
    assert "labkit data fetch mnist" in message
    assert truncated.stat().st_size == 100_000  # nothing deleted or rewritten behind the user's back


def test_missing_file_offline_says_where_it_looked_and_how_to_fetch(tmp_path, monkeypatch):
    _own_data_dir(tmp_path, monkeypatch, """
[toy]
title = "toy"
[[toy.files]]
path = "toy/toy.npz"
sha256 = "00"
url = "http://127.0.0.1:9/toy.npz"
url_sha256 = "00"
""")
    with pytest.raises(datasets.DatasetUnavailable) as err:
        datasets.locate(datasets.files("toy")[0])
    message = str(err.value)
    assert "toy/toy.npz" in message and "looked in" in message and str(tmp_path / "data") in message
    assert "labkit data fetch toy" in message


def test_pickled_payload_is_refused_even_with_a_matching_hash(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    evil = folder / "mnist.npz"
    np.savez(evil, x_train=np.array([object()], dtype=object), y_train=np.zeros(1))
    manifest = f'[mnist]\ntitle = "m"\n[[mnist.files]]\npath = "mnist.npz"\nsha256 = "{_sha(evil)}"\n'
    _own_data_dir(tmp_path, monkeypatch, manifest)
    with pytest.raises(ValueError, match="allow_pickle"):
        datasets.load("mnist")


@pytest.fixture
def loopback_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _toy_release(served, url, monkeypatch, tmp_path, declared_hash=None):
    release = served / "toy.npz"
    np.savez(release, x_train=np.arange(10, dtype=np.uint8))
    digest = declared_hash or _sha(release)
    _own_data_dir(tmp_path, monkeypatch, f"""
[toy]
title = "toy"
[[toy.files]]
path = "toy/toy.npz"
sha256 = "{digest}"
url = "{url}/toy.npz"
url_sha256 = "{digest}"
""")
    return release


def test_fetch_downloads_and_verifies_the_release(loopback_server, tmp_path, monkeypatch):
    served, url = loopback_server
    release = _toy_release(served, url, monkeypatch, tmp_path)
    [path] = datasets.fetch("toy")
    assert path == tmp_path / "cache" / "toy" / "toy.npz"
    assert path.read_bytes() == release.read_bytes()
    assert datasets.locate(datasets.files("toy")[0], fetch=False) == path  # found in the cache now


def test_missing_file_is_fetched_automatically_when_online(loopback_server, tmp_path, monkeypatch):
    served, url = loopback_server
    _toy_release(served, url, monkeypatch, tmp_path)
    monkeypatch.delenv("LABKIT_OFFLINE")
    assert datasets.locate(datasets.files("toy")[0]).is_file()


def test_download_with_the_wrong_hash_is_discarded(loopback_server, tmp_path, monkeypatch):
    served, url = loopback_server
    _toy_release(served, url, monkeypatch, tmp_path, declared_hash="ab" * 32)
    with pytest.raises(datasets.DatasetCorrupted, match="does not match its sha256"):
        datasets.fetch("toy")
    assert not (tmp_path / "cache" / "toy" / "toy.npz").exists()


def test_unreachable_release_is_a_clear_error(loopback_server, tmp_path, monkeypatch):
    served, url = loopback_server
    _toy_release(served, url, monkeypatch, tmp_path)
    (served / "toy.npz").unlink()  # the server now answers 404
    with pytest.raises(datasets.DatasetUnavailable, match="labkit data fetch toy"):
        datasets.fetch("toy")


def test_shipped_file_without_a_url_points_to_git(tmp_path, monkeypatch):
    folder = _own_data_dir(tmp_path, monkeypatch, (datasets.KIT_DATA / "MANIFEST.toml").read_text())
    shutil.copytree(datasets.KIT_DATA / "sms_spam", folder / "sms_spam")
    (folder / "sms_spam" / "SMSSpamCollection").write_text("ham\thello\n")
    with pytest.raises(datasets.DatasetCorrupted, match="data/sms_spam/SMSSpamCollection"):
        datasets.load("sms_spam", split="all")
