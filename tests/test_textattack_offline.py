"""TextAttack offline: the shipped WordNet and stopwords, prepare(), and proof that importing
TextAttack and running the lab's recipes opens no socket and writes nothing outside the kit's cache."""
import gzip
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from labkit import datasets, textattack_offline

REPO = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: a socket guard first, then prepare(), import textattack, build the
# lab's recipes (PWWS builds WordNet's synonym swap, which calls nltk.download) and attack.
PROBE = textwrap.dedent("""
    import socket

    def refuse(*args, **kwargs):
        raise RuntimeError(f"network use: {args!r}")

    class NoNetwork(socket.socket):
        connect = connect_ex = refuse

    socket.socket = NoNetwork
    socket.create_connection = socket.getaddrinfo = refuse

    from labkit import textattack_offline
    textattack_offline.prepare()
    import textattack
    from labkit import text_attacks
    from nltk.corpus import wordnet
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    assert "prize" in {l.name() for s in wordnet.synsets("award") for l in s.lemmas()}
    texts = ["win a free prize now, call to claim", "free entry to win cash", "see you at lunch",
             "are you coming home tonight", "claim your free award today", "meeting moved to noon"]
    labels = [1, 1, 0, 0, 1, 0]
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(C=100)).fit(texts, labels)
    wrapper = text_attacks.PipelineWrapper(model)
    for name in text_attacks.OFFLINE_RECIPES:
        attack = text_attacks.recipe(name, wrapper, query_budget=200)
        run = text_attacks.run(attack, texts[:2], labels[:2], name=name, progress=False)
        assert run.metrics()["n"] == 2, run.metrics()
    print("OFFLINE-OK", textattack.__name__)
""")


def test_import_and_recipes_open_no_socket_and_write_only_the_kit_cache(tmp_path):
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NLTK", "TA_", "HF_", "TRANSFORMERS", "XDG_", "KERAS", "MPLCONFIG", "TFHUB"))}
    env.update(HOME=str(home), LABKIT_CACHE=str(cache), LABKIT_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "OFFLINE-OK" in done.stdout, done.stderr[-3000:]
    assert list(home.iterdir()) == [], f"written outside the kit's cache: {sorted(home.rglob('*'))[:10]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "home"]
    kit = textattack_offline.root(cache / "textattack-offline")
    assert (kit / "textattack" / textattack_offline.MARKER).is_file()
    assert (kit / "nltk_data" / "corpora" / "wordnet" / "data.noun").is_file()


PREPARED = textattack_offline.VARIABLES


@pytest.fixture
def clean_env(monkeypatch):
    """prepare() in this process: every variable it sets and NLTK's state are restored afterwards."""
    import nltk

    for name in PREPARED:
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    monkeypatch.setattr(nltk, "download", nltk.download)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))


def test_prepare_sets_offline_variables_and_refuses_downloads(tmp_path, clean_env):
    import nltk

    settings = textattack_offline.prepare(tmp_path / "kit")
    for name in ("NLTK_DATA", "TA_CACHE_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert os.environ[name] == settings[name]
    assert Path(settings["NLTK_DATA"]).is_relative_to(tmp_path / "kit")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert nltk.download("wordnet") is True and nltk.download("stopwords") is True
    assert nltk.download("omw-1.4") is False  # English WordNet needs no multilingual data
    with pytest.raises(LookupError, match="offline"):
        nltk.download("punkt")
    english = Path(settings["NLTK_DATA"]) / "corpora" / "stopwords" / "english"
    assert set(english.read_text().split()) == textattack_offline.stopwords()
    assert {"the", "a", "you", "don't"} <= textattack_offline.stopwords()


def test_a_tampered_unpacked_copy_is_restored(tmp_path, clean_env):
    settings = textattack_offline.prepare(tmp_path / "kit")
    noun = Path(settings["NLTK_DATA"]) / "corpora" / "wordnet" / "index.noun"
    size = noun.stat().st_size
    noun.write_text("truncated")
    textattack_offline.prepare(tmp_path / "kit")
    assert noun.stat().st_size == size


def _kit_copy(tmp_path, monkeypatch, change):
    """A copy of the kit's data folder (manifest and data/nltk only) with one change made."""
    data = tmp_path / "data"
    (data / "nltk").mkdir(parents=True)
    shutil.copy(datasets.KIT_DATA / "MANIFEST.toml", data / "MANIFEST.toml")
    for path in (datasets.KIT_DATA / "nltk").iterdir():
        shutil.copy(path, data / "nltk" / path.name)
    change(data / "nltk" / "wordnet-3.0.zip")
    monkeypatch.setattr(datasets, "KIT_DATA", data)


@pytest.mark.parametrize("change, words", [
    (lambda p: p.unlink(), ["missing", "git checkout -- data/nltk/", "labkit build-wordnet"]),
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), ["does not match its sha256", "git checkout -- data/nltk/"]),
])
def test_missing_or_corrupted_wordnet_names_the_fix(tmp_path, monkeypatch, clean_env, change, words):
    _kit_copy(tmp_path, monkeypatch, change)
    with pytest.raises(textattack_offline.OfflineSetupError) as err:
        textattack_offline.prepare(tmp_path / "kit")
    for word in words:
        assert word in str(err.value)
    assert "prepare() again" in str(err.value)


def test_the_shipped_zip_holds_what_nltk_reads_and_the_license():
    entry = next(e for e in datasets.files("nltk_data") if e.path.endswith(".zip"))
    path = datasets.locate(entry, fetch=False)
    with zipfile.ZipFile(path) as archive:
        names = sorted(i.filename for i in archive.infolist())
        assert names == sorted(f"wordnet/{f}" for f in textattack_offline.WORDNET_FILES + ("LICENSE",))
        assert archive.getinfo("wordnet/index.sense").file_size == 0
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_LZMA}
        licence = archive.read("wordnet/LICENSE")
        lexnames = archive.read("wordnet/lexnames").decode().splitlines()
    assert licence == (datasets.KIT_DATA / "nltk" / "WORDNET-LICENSE").read_bytes()
    assert b"WordNet 3.0 Copyright 2006 by Princeton University" in licence
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" and lexnames[44] == "44\tadj.ppl\t3"
    assert path.stat().st_size < 7_000_000


MANPAGE = "\n".join([".TS", "l l l."] + [
    f"{i:02d}\t{name}\tsomething" for i, name in enumerate(
        ["adj.all", "adj.pert", "adv.all"] + [f"noun.{chr(97 + i)}" for i in range(26)] + [f"verb.{chr(97 + i)}" for i in range(15)]
        + ["adj.ppl"])] + [".TE"])


def test_lexnames_from_the_man_page():
    lines = textattack_offline.lexnames_from_manpage(MANPAGE).splitlines()
    assert lines[0] == "00\tadj.all\t3" and lines[2] == "02\tadv.all\t4" and lines[3] == "03\tnoun.a\t1"
    assert lines[29] == "29\tverb.a\t2" and len(lines) == 45
    with pytest.raises(ValueError, match="45"):
        textattack_offline.lexnames_from_manpage("00\tadj.all\tx\n")


def _fake_package(root: Path) -> None:
    wn = root / "usr/share/wordnet"
    wn.mkdir(parents=True)
    for name in textattack_offline.WORDNET_FILES:
        if name not in ("lexnames", "index.sense"):
            (wn / name).write_text(f"contents of {name}\n")
    man = root / "usr/share/man/man5"
    man.mkdir(parents=True)
    (man / "lexnames.5WN.gz").write_bytes(gzip.compress(MANPAGE.encode(), mtime=0))
    doc = root / "usr/share/doc/wordnet-base"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("WordNet 3.0 Copyright 2006 by Princeton University.\n")


def test_the_zip_builds_reproducibly_from_an_unpacked_package(tmp_path):
    _fake_package(tmp_path / "pkg")
    first = textattack_offline.build_wordnet_zip(tmp_path / "pkg", tmp_path / "a.zip")
    second = textattack_offline.build_wordnet_zip(tmp_path / "pkg", tmp_path / "b.zip")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert archive.read("wordnet/data.noun") == b"contents of data.noun\n"
        assert archive.read("wordnet/index.sense") == b""
        assert archive.read("wordnet/lexnames").startswith(b"00\tadj.all\t3\n")
    (tmp_path / "pkg/usr/share/wordnet/data.noun").unlink()
    with pytest.raises(ValueError, match="wordnet-base"):
        textattack_offline.build_wordnet_zip(tmp_path / "pkg", tmp_path / "c.zip")


def test_the_cli_builds_the_zip(tmp_path):
    from labkit import cli

    _fake_package(tmp_path / "pkg")
    assert cli.main(["build-wordnet", str(tmp_path / "pkg"), "--out", str(tmp_path / "w.zip")]) == 0
    assert zipfile.is_zipfile(tmp_path / "w.zip")
