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


def _own_kit_manifest(tmp_path, monkeypatch, manifest: str):
    """Stand in for the kit's own data/ folder (the trust anchor) with a manifest of the test's choosing."""
    folder = tmp_path / "kit_data"
    folder.mkdir(exist_ok=True)
    (folder / "MANIFEST.toml").write_text(manifest)
    monkeypatch.setattr(datasets, "KIT_DATA", folder)
    return folder


def test_pickled_payload_is_refused_even_with_a_matching_hash(tmp_path, monkeypatch):
    folder = tmp_path / "kit_data"
    folder.mkdir()
    evil = folder / "mnist.npz"
    np.savez(evil, x_train=np.array([object()], dtype=object), y_train=np.zeros(1))
    _own_kit_manifest(tmp_path, monkeypatch, f'[mnist]\ntitle = "m"\n[[mnist.files]]\npath = "mnist.npz"\n'
                                             f'sha256 = "{_sha(evil)}"\n')
    with pytest.raises(datasets.DatasetCorrupted, match="allow_pickle=False"):
        datasets.load("mnist")


# ---- the kit's manifest is the trust anchor (red-team finding 4) --------------------------------

def _relabelled_credit(folder):
    """The kit's Taiwan credit table with every 'default' turned into 'repaid'."""
    (folder / "credit").mkdir(parents=True, exist_ok=True)
    src = datasets.KIT_DATA / "credit" / "taiwan_default_of_credit_card_clients.csv"
    lines = src.read_text().splitlines()
    relabelled = [lines[0]] + [line[:line.rindex(",")] + ",0" for line in lines[1:]]
    target = folder / "credit" / src.name
    target.write_text("\n".join(relabelled) + "\n")
    return target


def test_a_data_folder_manifest_cannot_override_a_known_hash(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    target = _relabelled_credit(folder)
    kit = (datasets.KIT_DATA / "MANIFEST.toml").read_text()
    real = datasets.files("taiwan_credit")[0].sha256
    _own_data_dir(tmp_path, monkeypatch, kit.replace(real, _sha(target)))  # the attacker's hash for its file
    with pytest.warns(UserWarning, match="redefines the kit's dataset 'taiwan_credit'"):
        with pytest.raises(datasets.DatasetCorrupted, match="does not match its sha256"):
            datasets.load("taiwan_credit")


def test_a_data_folder_may_declare_extra_datasets(tmp_path, monkeypatch):
    folder = _own_data_dir(tmp_path, monkeypatch, "")
    (folder / "extra.txt").write_text("hello")
    (folder / "MANIFEST.toml").write_text(f'[extra]\ntitle = "x"\n[[extra.files]]\npath = "extra.txt"\n'
                                          f'sha256 = "{_sha(folder / "extra.txt")}"\n')
    assert "extra" in datasets.names() and "mnist" in datasets.names()
    assert datasets.read_verified(datasets.files("extra")[0]) == b"hello"


@pytest.mark.parametrize("path", ["../outside.txt", "sub/../../outside.txt", "/etc/hostname", "C:/x.txt", "~/x"])
def test_a_manifest_path_may_not_leave_its_data_folder(tmp_path, monkeypatch, path):
    (tmp_path / "outside.txt").write_text("secret")
    _own_data_dir(tmp_path, monkeypatch, f'[leak]\ntitle = "x"\n[[leak.files]]\npath = "{path}"\n'
                                         f'sha256 = "{_sha(tmp_path / "outside.txt")}"\n')
    with pytest.raises(datasets.ManifestError, match="may not leave the folder"):
        datasets.read_verified(datasets.files("leak")[0])


def test_a_link_out_of_the_data_folder_is_not_followed(tmp_path, monkeypatch):
    (tmp_path / "outside.txt").write_text("secret")
    folder = _own_data_dir(tmp_path, monkeypatch, f'[leak]\ntitle = "x"\n[[leak.files]]\npath = "inside.txt"\n'
                                                  f'sha256 = "{_sha(tmp_path / "outside.txt")}"\n')
    (folder / "inside.txt").symlink_to(tmp_path / "outside.txt")
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(datasets.DatasetUnavailable):
        datasets.read_verified(datasets.files("leak")[0], fetch=False)


@pytest.mark.parametrize("text", ["[[[", "[toy]\ntitle = 1\n", b"\xff\xfe"])
def test_a_malformed_manifest_is_one_sentence(tmp_path, monkeypatch, text):
    folder = _own_data_dir(tmp_path, monkeypatch, "")
    (folder / "MANIFEST.toml").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(datasets.ManifestError, match="MANIFEST.toml"):
        datasets.names()


def test_a_data_file_swapped_after_its_check_is_never_parsed(tmp_path, monkeypatch, swap_after_first_read):
    src = datasets.KIT_DATA / "credit" / "taiwan_default_of_credit_card_clients.csv"
    folder = tmp_path / "kit_data"
    (folder / "credit").mkdir(parents=True)
    shutil.copy(src, folder / "credit" / src.name)
    relabelled = _relabelled_credit(tmp_path / "evil").read_bytes()
    kit = (datasets.KIT_DATA / "MANIFEST.toml").read_text()
    _own_kit_manifest(tmp_path, monkeypatch, kit)
    swap_after_first_read(folder / "credit" / src.name, relabelled)
    try:
        _, y = datasets.load("taiwan_credit", split="all")
    except datasets.DatasetCorrupted:
        return
    assert y.sum() > 6000  # the real labels (6,636 defaults), not the relabelled file's zero


def test_a_zip_member_is_sized_before_it_is_read(tmp_path):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x_train.npy", b"\0" * (4 << 20))  # 4 MiB of zeros: a few kB compressed
    with pytest.raises(datasets.DatasetCorrupted, match="declares"):
        datasets.npz_arrays(buf.getvalue(), ["x_train"], "bomb.npz", budget=1 << 20)


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


def _cifar_zip(members: dict) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return buf.getvalue()


def _jpeg(size=(32, 32)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("case", ["ok", "oversized member", "wrong image size"])
def test_cifar10_zip_members_are_checked_before_they_are_decoded(tmp_path, monkeypatch, case):
    members = {"cifar10/train/airplane/0.jpg": _jpeg(), "cifar10/test/cat/1.jpg": _jpeg()}
    if case == "oversized member":
        members["cifar10/train/cat/2.jpg"] = b"\0" * (1 << 20)  # 1 MB where a 32x32 JPEG is ~1 kB
    if case == "wrong image size":
        members["cifar10/train/cat/2.jpg"] = _jpeg((4000, 4000))
    folder = tmp_path / "kit_data"
    folder.mkdir()
    (folder / "c.zip").write_bytes(_cifar_zip(members))
    _own_kit_manifest(tmp_path, monkeypatch, f'[cifar10]\ntitle = "c"\n[[cifar10.files]]\npath = "c.zip"\n'
                                             f'sha256 = "{_sha(folder / "c.zip")}"\n')
    if case == "ok":
        x, y = datasets.load("cifar10", split="train")
        assert x.shape == (1, 32, 32, 3) and list(y) == [0]
    else:
        with pytest.raises(datasets.DatasetCorrupted, match="cat/2.jpg"):
            datasets.load("cifar10", split="train")
