"""TextAttack with no network: the kit's shipped WordNet and stopwords, unpacked into the kit's cache.

TextAttack 0.3.11 runs six NLTK downloads the first time it is imported and dies offline; its
WordNet synonym swap downloads the Open Multilingual Wordnet each time it is built. Call
`prepare()` BEFORE `import textattack`:

    from labkit import textattack_offline
    textattack_offline.prepare()
    import textattack

`prepare()` verifies `data/nltk/wordnet-3.0.zip` and `data/nltk/stopwords-english.txt` against
their sha256 in data/MANIFEST.toml, unpacks them into `<labkit cache>/textattack-offline/nltk_data`
(NLTK's corpus layout), points NLTK_DATA there, points TA_CACHE_DIR at a folder beside it that
holds TextAttack's post-install marker (so the six downloads never start), sets the Hugging Face
hub and TensorFlow Hub variables to offline, and replaces `nltk.download` with a function that
never opens a socket (resources the kit ships are found locally; anything else raises a
LookupError naming the resource).

The WordNet zip is built from Debian's `wordnet-base` package (WordNet 3.0, Princeton license:
redistribution allowed with its notice, shipped as data/nltk/WORDNET-LICENSE). Rebuild it with

    apt-get download wordnet-base
    labkit build-wordnet wordnet-base_*.deb --out data/nltk/wordnet-3.0.zip

(`build_wordnet_zip`; the output is byte-for-byte reproducible from the same package).
"""
from __future__ import annotations

import gzip
import io
import lzma  # noqa: F401 - ZIP_LZMA needs it: fail at import on a Python built without it
import os
import re
import shutil
import sys
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

from . import datasets

DATASET = "nltk_data"  # the manifest entry: the WordNet zip, its license notice and the stopword list
WORDNET_FILES = ("lexnames", "index.noun", "index.verb", "index.adj", "index.adv",
                 "data.noun", "data.verb", "data.adj", "data.adv",
                 "noun.exc", "verb.exc", "adj.exc", "adv.exc", "cntlist.rev", "index.sense")
# NLTK's reader insists that index.sense exists but reads it only for lemma_from_key / synset_from_sense_key;
# the zip carries it EMPTY (7 MB saved): those two calls fail, everything the recipes use works.
EMPTY_FILES = ("index.sense",)
# Libraries imported with TextAttack that write a config folder in $HOME on first import; pointed
# at the kit's cache unless the user already has that folder or set the variable.
HOME_FOLDERS = {"KERAS_HOME": ".keras", "MPLCONFIGDIR": ".config/matplotlib"}
MARKER = "post_install_check_3"  # TextAttack 0.3.11 skips its NLTK downloads when this file exists
# NLTK packages whose absence is harmless offline: WordSwapWordNet(language="eng") downloads the
# Open Multilingual Wordnet at construction but only needs it for other languages.
NOT_NEEDED = {"omw", "omw-1.4"}
OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
# Every environment variable prepare() may set.
VARIABLES = ("NLTK_DATA", "TA_CACHE_DIR", "TFHUB_CACHE_DIR", "HF_HOME", *OFFLINE_VARIABLES, "KERAS_HOME", "MPLCONFIGDIR",
             *QUIET_TENSORFLOW)
_FIXED_TIME = (2006, 12, 6, 0, 0, 0)  # WordNet 3.0's release month: reproducible zip entries


class OfflineSetupError(RuntimeError):
    """The shipped WordNet or stopword list is missing or corrupted, or TextAttack was set up wrongly."""


def _fix_sentence(err: Exception) -> str:
    return (f"TextAttack cannot run offline: {err} The kit ships WordNet 3.0 and the stopword list in "
            "data/nltk/; restore them with `git checkout -- data/nltk/` (or rebuild the zip with "
            "`labkit build-wordnet wordnet-base_*.deb --out data/nltk/wordnet-3.0.zip`, see "
            "labkit/textattack_offline.py), then call labkit.textattack_offline.prepare() again.")


def _entry(suffix: str) -> datasets.DataFile:
    for entry in datasets.files(DATASET):
        if entry.path.endswith(suffix):
            return entry
    raise OfflineSetupError(f"data/MANIFEST.toml has no file ending in {suffix!r} under [{DATASET}]; "
                            "restore the manifest with `git checkout -- data/MANIFEST.toml`.")


def root(cache: Path | str | None = None) -> Path:
    """The kit-owned folder that holds the unpacked NLTK data and TextAttack's cache."""
    return Path(cache) if cache is not None else datasets.cache_dir() / "textattack-offline"


def _unpacked_ok(target: Path, archive: zipfile.ZipFile, stamp: str) -> bool:
    marker = target / ".sha256"
    if not marker.is_file() or marker.read_text().strip() != stamp:
        return False
    for info in archive.infolist():
        path = target / info.filename
        if not info.is_dir() and (not path.is_file() or path.stat().st_size != info.file_size):
            return False
    return True


def _unpack_wordnet(data: bytes, sha: str, corpora: Path) -> Path:
    target = corpora / "wordnet"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [i.filename for i in archive.infolist() if not i.is_dir()]
        expected = {f"wordnet/{name}" for name in WORDNET_FILES}
        if not expected <= set(names) or any(not n.startswith("wordnet/") or ".." in n for n in names):
            raise OfflineSetupError(_fix_sentence(ValueError(
                f"the WordNet zip lacks {sorted(expected - set(names))} or holds paths outside wordnet/.")))
        if _unpacked_ok(corpora, archive, sha):
            return target
        corpora.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=corpora, prefix=".unpack-"))
        try:
            archive.extractall(scratch)
            shutil.rmtree(target, ignore_errors=True)
            (scratch / "wordnet").rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    (corpora / ".sha256").write_text(sha + "\n")
    return target


def _read(suffix: str) -> tuple[bytes, str]:
    entry = _entry(suffix)
    try:
        data = datasets.read_verified(entry, fetch=False)
    except datasets.DatasetError as err:
        raise OfflineSetupError(_fix_sentence(err)) from None
    return data, entry.sha256


def _offline_download(info_or_id=None, *args, **kwargs):
    """Stands in for nltk.download: looks locally, never opens a socket."""
    import nltk

    name = getattr(info_or_id, "id", info_or_id)
    if name in NOT_NEEDED:
        return False
    for kind in ("corpora", "tokenizers", "taggers", "help", "sentiment", "misc"):
        try:
            nltk.data.find(f"{kind}/{name}")
            return True
        except LookupError:
            continue
    raise LookupError(f"nltk.download({name!r}) was called, but the kit runs NLTK offline and does not ship "
                      f"{name!r}. Use a TextAttack component that needs only WordNet and stopwords (the lab's "
                      "recipes do), or place the resource under $NLTK_DATA by hand.")


def prepare(cache: Path | str | None = None) -> dict:
    """Make `import textattack` and the lab's recipes work with no network. Call before importing
    TextAttack. Returns the environment it set ({variable: value})."""
    folder = root(cache)
    nltk_data = folder / "nltk_data"
    ta_cache = folder / "textattack"
    wordnet, wordnet_sha = _read("wordnet-3.0.zip")
    stopwords, _ = _read("stopwords-english.txt")
    _read("WORDNET-LICENSE")
    corpora = nltk_data / "corpora"
    try:
        _unpack_wordnet(wordnet, wordnet_sha, corpora)
    except zipfile.BadZipFile as err:
        raise OfflineSetupError(_fix_sentence(err)) from None
    english = corpora / "stopwords" / "english"
    english.parent.mkdir(parents=True, exist_ok=True)
    if not english.is_file() or english.read_bytes() != stopwords:
        english.write_bytes(stopwords)
    ta_cache.mkdir(parents=True, exist_ok=True)
    (ta_cache / MARKER).touch()
    settings = {"NLTK_DATA": str(nltk_data), "TA_CACHE_DIR": str(ta_cache),
                "TFHUB_CACHE_DIR": str(ta_cache), "HF_HOME": str(ta_cache / "huggingface"),
                **OFFLINE_VARIABLES}
    home = Path.home()
    for variable, default in HOME_FOLDERS.items():
        if variable not in os.environ and not (home / default).exists():
            settings[variable] = str(folder / variable.lower())
    for variable, value in QUIET_TENSORFLOW.items():  # TextAttack imports TensorFlow: keep its logs out of the notebook
        settings[variable] = os.environ.get(variable, value)
    os.environ.update(settings)
    # TextAttack itself sets PYTORCH_TRANSFORMERS_CACHE (to TA_CACHE_DIR); transformers warns about the name.
    warnings.filterwarnings("ignore", message="Using `PYTORCH_TRANSFORMERS_CACHE` is deprecated", category=FutureWarning)
    import nltk  # NLTK reads NLTK_DATA at import; an earlier import gets the folder added here

    if str(nltk_data) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_data))
    nltk.download = _offline_download
    module = sys.modules.get("textattack.shared.utils.install")
    if module is not None and Path(module.TEXTATTACK_CACHE_DIR) != ta_cache:
        warnings.warn(f"TextAttack was imported before labkit.textattack_offline.prepare() (its cache is "
                      f"{module.TEXTATTACK_CACHE_DIR}); NLTK now reads the kit's data, but to be sure nothing "
                      "downloads, restart the kernel and call prepare() before `import textattack`.", stacklevel=2)
    return settings


def stopwords() -> set[str]:
    """The shipped English stopword list (TextAttack's TextFooler list), as the recipes' StopwordModification uses it."""
    data, _ = _read("stopwords-english.txt")
    return set(data.decode("utf-8").split())


# ----------------------------------------------------------------------------- building the zip
def _ar_members(deb: bytes):
    """The members of a Debian package (an `ar` archive): (name, bytes)."""
    if not deb.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        yield name, deb[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)


def _deb_files(deb_path: Path) -> dict[str, bytes]:
    files = {}
    for name, body in _ar_members(Path(deb_path).read_bytes()):
        if name.startswith("data.tar"):
            mode = {"data.tar.xz": "r:xz", "data.tar.gz": "r:gz", "data.tar.zst": None}.get(name, "r:*")
            if mode is None:
                raise ValueError(f"{deb_path} uses {name}; unpack it with `dpkg -x` and pass the folder")
            with tarfile.open(fileobj=io.BytesIO(body), mode=mode) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        files[member.name.lstrip("./")] = tar.extractfile(member).read()
    return files


def lexnames_from_manpage(manpage: str) -> str:
    """NLTK's `lexnames` file (number<TAB>name<TAB>syntactic category) from WordNet's lexnames(5WN) page."""
    category = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
    lines = []
    for number, name in re.findall(r"^(\d\d)\t([a-z]+\.[A-Za-z]+)\s*\t", manpage, flags=re.M):
        lines.append(f"{number}\t{name}\t{category[name.split('.')[0]]}")
    if len(lines) != 45:
        raise ValueError(f"expected 45 lexicographer files in the lexnames page, found {len(lines)}")
    return "\n".join(lines) + "\n"


def build_wordnet_zip(source: Path | str, out: Path | str) -> Path:
    """Build the kit's WordNet zip from Debian's wordnet-base package (the .deb, or a folder it was
    unpacked into with `dpkg -x`). Only what NLTK's WordNet reader needs for synsets and lemmas is
    kept (the sense index empty, no verb frames), LZMA-compressed with fixed timestamps."""
    source = Path(source)
    if source.is_dir():
        files = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    else:
        files = _deb_files(source)
    wn = "usr/share/wordnet/"
    page = files.get("usr/share/man/man5/lexnames.5WN.gz")
    notice = files.get("usr/share/doc/wordnet-base/copyright")
    missing = [f for f in WORDNET_FILES if f != "lexnames" and f not in EMPTY_FILES and wn + f not in files]
    if missing or page is None or notice is None:
        raise ValueError(f"{source} is not Debian's wordnet-base package (missing {missing or 'the lexnames page'})")
    contents = {"lexnames": lexnames_from_manpage(gzip.decompress(page).decode("utf-8")).encode()}
    contents.update({f: files[wn + f] for f in WORDNET_FILES if f != "lexnames" and f not in EMPTY_FILES})
    contents.update({f: b"" for f in EMPTY_FILES})
    contents["LICENSE"] = notice
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as archive:
        for name in sorted(contents):
            info = zipfile.ZipInfo(f"wordnet/{name}", date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_LZMA
            info.external_attr = 0o644 << 16
            archive.writestr(info, contents[name])
    return out


def build_stopwords(out: Path | str) -> Path:
    """Write the English stopword list the kit ships: the one TextAttack's TextFooler recipe spells
    out (MIT license; NLTK's English list plus contractions), one word a line, sorted. Read from
    the installed recipe's source text, so TextAttack is not imported (that needs prepare())."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("textattack")
    source = Path(spec.origin).parent / "attack_recipes" / "textfooler_jin_2019.py"
    found = re.search(r"stopwords = set\(\s*(\[.*?\])\s*\)", source.read_text(encoding="utf-8"), flags=re.S)
    if found is None:
        raise ValueError(f"no stopword list in {source}: this TextAttack version spells it differently")
    words = sorted(set(ast.literal_eval(found.group(1))))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(words) + "\n", encoding="utf-8")
    return out


def wordnet_license(source: Path | str) -> str:
    """WordNet's license notice as Debian ships it (the text that must accompany every copy)."""
    with zipfile.ZipFile(source) as archive:
        return archive.read("wordnet/LICENSE").decode("utf-8")


__all__ = ["prepare", "stopwords", "root", "build_wordnet_zip", "build_stopwords", "lexnames_from_manpage", "OfflineSetupError"]
