"""Datasets: find a file, verify its sha256 against data/MANIFEST.toml, load it without pickle.

Search order for every file: `$LABKIT_DATA`, the kit's `data/` folder, the user cache
(`$LABKIT_CACHE` or the platform cache folder). A file missing everywhere is downloaded from its
canonical release with pooch (progress bar, checksum) when the network is up, unless
`LABKIT_OFFLINE` is set; otherwise the error names the file, where it looked, and the command
that fetches it.

Trust: the kit's own data/MANIFEST.toml is authoritative for the datasets it names. A
MANIFEST.toml in `$LABKIT_DATA` may declare extra datasets, never change a known one (whoever can
write to a data folder must not choose the hashes its files are checked against). No manifest
path may leave its data folder ('..', absolute paths, links pointing out). Loaders read each file
once and parse the very bytes they hashed (`read_verified`); .npz archives are read member by
member, each size checked first, never unpickled (`npz_arrays`).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import tomllib
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np

KIT_DATA = Path(__file__).resolve().parent.parent / "data"
MANIFEST_NAME = "MANIFEST.toml"


class DatasetError(Exception):
    """Base class for every data problem the kit reports."""


class UnknownDataset(DatasetError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


class DatasetUnavailable(DatasetError, FileNotFoundError):
    """The file is nowhere on disk and could not be fetched."""


class DatasetCorrupted(DatasetError, ValueError):
    """The file exists but its bytes do not match the manifest."""


@dataclass(frozen=True)
class DataFile:
    dataset: str
    path: str  # relative to a data folder
    sha256: str
    url: str | None = None
    url_sha256: str | None = None

    def accepted_hashes(self) -> set[str]:
        return {h for h in (self.sha256, self.url_sha256) if h}


class ManifestError(DatasetError, ValueError):
    """A manifest that cannot be read, or that tries to do what a manifest may not."""


def manifest_path() -> Path:
    """The kit's own manifest: the trust anchor for every dataset the kit knows."""
    path = KIT_DATA / MANIFEST_NAME
    if not path.is_file():
        raise DatasetUnavailable(
            f"No {MANIFEST_NAME} in {KIT_DATA}: run labkit from a checkout of the kit (`pip install -e .`).")
    return path


def user_manifest_path() -> Path | None:
    """A manifest in $LABKIT_DATA: it may declare extra datasets, never change the kit's."""
    folder = os.environ.get("LABKIT_DATA")
    if folder and (Path(folder) / MANIFEST_NAME).is_file() and \
            (Path(folder) / MANIFEST_NAME).resolve() != manifest_path().resolve():
        return Path(folder) / MANIFEST_NAME
    return None


def _safe_relative(path: str, where: Path, dataset: str) -> str:
    """A file path inside a data folder: relative, no '..', no drive or root (so it cannot leave the folder)."""
    pure = PurePosixPath(str(path).replace("\\", "/"))
    if not str(path) or pure.is_absolute() or ".." in pure.parts or ":" in str(path) or str(path).startswith("~"):
        raise ManifestError(f"{where}: dataset {dataset!r} names the file {path!r}; a manifest path must be relative "
                            "to its data folder, without '..', '~' or a drive (it may not leave the folder).")
    return str(pure)


def _validated(entries: dict, where: Path) -> dict:
    for name, spec in entries.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("files"), list) or not spec["files"]:
            raise ManifestError(f"{where}: [{name}] needs a title and at least one [[{name}.files]] entry "
                                "with path and sha256.")
        for file in spec["files"]:
            if not isinstance(file, dict) or not isinstance(file.get("path"), str) or \
                    not isinstance(file.get("sha256"), str):
                raise ManifestError(f"{where}: a file of [{name}] lacks a path or a sha256 (both strings).")
            unknown = set(file) - {"path", "sha256", "url", "url_sha256"}
            if unknown:
                raise ManifestError(f"{where}: a file of [{name}] has unknown keys {sorted(unknown)}; "
                                    "use path, sha256, url and url_sha256.")
            file["path"] = _safe_relative(file["path"], where, name)
    return entries


@lru_cache(maxsize=None)
def _manifest_cached(path: str, mtime: float) -> dict:
    try:
        with open(path, "rb") as f:
            return _validated(tomllib.load(f), Path(path))
    except tomllib.TOMLDecodeError as err:
        raise ManifestError(f"{path} is not valid TOML ({err}); fix the line it names or restore the file.") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path} is not UTF-8 text; restore the file.") from None


def _load_manifest(path: Path) -> dict:
    return _manifest_cached(str(path), path.stat().st_mtime)


def manifest() -> dict:
    """The kit's datasets, plus the extra datasets a $LABKIT_DATA manifest declares. A user
    manifest never overrides a dataset the kit knows: the kit's hashes stay authoritative."""
    entries = dict(_load_manifest(manifest_path()))
    user = user_manifest_path()
    if user is not None:
        for name, spec in _load_manifest(user).items():
            if name not in entries:
                entries[name] = spec
            elif spec.get("files") != entries[name].get("files"):
                warnings.warn(f"{user} redefines the kit's dataset {name!r}; the kit's hashes in "
                              f"{manifest_path()} are used (a data folder may add datasets, never change known ones).",
                              stacklevel=2)
    return entries


def names() -> list[str]:
    return list(manifest())


def info(name: str) -> dict:
    entries = manifest()
    if name not in entries:
        raise UnknownDataset(f"Unknown dataset {name!r}. Known datasets: {', '.join(entries)}.")
    return entries[name]


def files(name: str) -> list[DataFile]:
    return [DataFile(dataset=name, **spec) for spec in info(name)["files"]]


def cache_dir() -> Path:
    if os.environ.get("LABKIT_CACHE"):
        return Path(os.environ["LABKIT_CACHE"])
    import pooch

    return Path(pooch.os_cache("labkit"))


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("LABKIT_DATA"):
        dirs.append(Path(os.environ["LABKIT_DATA"]))
    dirs += [KIT_DATA, cache_dir()]
    return dirs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _restore_hint(entry: DataFile, where: Path) -> str:
    if where.is_relative_to(KIT_DATA):
        hint = f"restore it with `git checkout -- data/{entry.path}`"
        if entry.url:
            hint += f" or delete it and run `labkit data fetch {entry.dataset}`"
        return hint
    if entry.url:
        return f"delete it and run `labkit data fetch {entry.dataset}`"
    return f"replace it with the kit's copy of data/{entry.path}"


def verify(path: Path, entry: DataFile) -> Path:
    actual = sha256_of(path)
    if actual not in entry.accepted_hashes():
        raise DatasetCorrupted(
            f"{path} does not match its sha256 in {MANIFEST_NAME} (expected {entry.sha256[:12]}..., "
            f"got {actual[:12]}...; {path.stat().st_size} bytes): the file is corrupted or truncated. "
            f"To fix it, {_restore_hint(entry, path)}."
        )
    return path


def _offline() -> bool:
    return os.environ.get("LABKIT_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def download(entry: DataFile, progressbar: bool = True) -> Path:
    """Fetch the canonical release of one file into the user cache and verify it (pooch)."""
    import pooch
    import requests

    if not entry.url:
        raise DatasetUnavailable(
            f"{entry.path} ({entry.dataset}) has no download source: it ships with the kit. "
            f"Restore it with `git checkout -- data/{entry.path}`."
        )
    target = cache_dir() / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fetched = pooch.retrieve(
            entry.url,
            known_hash=f"sha256:{entry.url_sha256}",
            fname=target.name,
            path=target.parent,
            downloader=pooch.HTTPDownloader(progressbar=progressbar, timeout=60),
        )
    except requests.exceptions.RequestException as err:
        raise DatasetUnavailable(
            f"Could not download {entry.path} for {entry.dataset!r} from {entry.url} ({type(err).__name__}). "
            f"Check the network and run `labkit data fetch {entry.dataset}` again, "
            f"or copy the file into {search_dirs()[0]}."
        ) from err
    except ValueError as err:  # pooch: hash mismatch; it has already deleted the bad download
        raise DatasetCorrupted(
            f"The download of {entry.path} from {entry.url} does not match its sha256 in {MANIFEST_NAME} "
            f"and was discarded ({err}). The release may have changed; report it, or copy a verified file "
            f"into {search_dirs()[0]}."
        ) from err
    return Path(fetched)


def _inside(folder: Path, relative: str) -> Path | None:
    """folder / relative, or None when it resolves outside the folder (a link pointing out of it)."""
    candidate = folder / relative
    try:
        if not candidate.resolve().is_relative_to(folder.resolve()):
            return None
    except OSError:
        return None
    return candidate


def _missing(entry: DataFile, fetch: bool | None) -> Path:
    fetch = (not _offline()) if fetch is None else fetch
    looked = ", ".join(str(d) for d in search_dirs())
    if fetch and entry.url:
        try:
            return download(entry)
        except DatasetUnavailable as err:
            raise DatasetUnavailable(
                f"{entry.path} ({entry.dataset}) is missing: looked in {looked}; the download failed too. "
                f"Run `labkit data fetch {entry.dataset}` when online, or copy the file into one of those folders."
            ) from err
    how = (f"run `labkit data fetch {entry.dataset}` (needs the network)" if entry.url
           else f"restore it with `git checkout -- data/{entry.path}`" if info(entry.dataset).get("shipped")
           else "copy the file into $LABKIT_DATA")
    raise DatasetUnavailable(f"{entry.path} ({entry.dataset}) is missing: looked in {looked}. To get it, {how}.")


def _candidates(entry: DataFile):
    for folder in search_dirs():
        candidate = _inside(folder, entry.path)
        if candidate is not None and candidate.is_file():
            yield candidate


def locate(entry: DataFile, fetch: bool | None = None) -> Path:
    """The verified path of one file; fetches it when missing (unless offline). To USE the file,
    call read_verified: it hashes and returns the same bytes (no swap between check and use)."""
    for candidate in _candidates(entry):
        return verify(candidate, entry)
    return _missing(entry, fetch)


def read_verified(entry: DataFile, fetch: bool | None = None) -> bytes:
    """The bytes of one file, read once and checked against the manifest's sha256."""
    path = next(_candidates(entry), None) or _missing(entry, fetch)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual not in entry.accepted_hashes():
        raise DatasetCorrupted(
            f"{path} does not match its sha256 in {MANIFEST_NAME} (expected {entry.sha256[:12]}..., "
            f"got {actual[:12]}...; {len(data)} bytes): the file is corrupted or truncated. "
            f"To fix it, {_restore_hint(entry, path)}."
        )
    return data


def fetch(name: str) -> list[Path]:
    """Make every file of a dataset present and verified (downloading what is missing)."""
    return [locate(entry, fetch=True) for entry in files(name)]


def status(name: str) -> list[tuple[str, str, str]]:
    """(file, state, detail) for each file of a dataset, never raising: for `labkit doctor`."""
    rows = []
    for entry in files(name):
        try:
            path = locate(entry, fetch=False)
            rows.append((entry.path, "ok", str(path)))
        except DatasetCorrupted as err:
            rows.append((entry.path, "CORRUPTED", str(err)))
        except DatasetUnavailable as err:
            rows.append((entry.path, "missing", str(err)))
    return rows


# ---- loaders: plain arrays and text, never pickle -------------------------------------------

SPLITS = ("train", "test")


def _check_split(name: str, split: str, allowed) -> None:
    if split not in allowed:
        raise ValueError(f"Dataset {name!r} has no split {split!r}; use one of {', '.join(allowed)}.")


MAX_MEMBER_BYTES = 1 << 30  # one array or archive member; the kit's largest is under 200 MB


def npz_arrays(data: bytes, keys, what: str, budget: int = MAX_MEMBER_BYTES) -> dict:
    """The named arrays of an .npz archive held in `data`; nothing else in it is read. Each
    member's declared size is checked before it is read, the .npy header's shape must match the
    bytes present, and object arrays (pickle) are refused: nothing is ever unpickled."""
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise DatasetCorrupted(f"{what} is not an .npz archive ({err}).") from None
    out = {}
    with archive:
        for key in keys:
            try:
                member = archive.getinfo(key + ".npy")
            except KeyError:
                raise DatasetCorrupted(f"{what} has no array {key!r}.") from None
            if member.file_size > budget:
                raise DatasetCorrupted(f"{what}: the array {key!r} declares {member.file_size:,} bytes, over the "
                                       f"{budget:,} allowed; refusing to read it.")
            try:
                with archive.open(member) as f:
                    blob = f.read(member.file_size + 1)
                buf = io.BytesIO(blob)
                version = np.lib.format.read_magic(buf)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = header(buf)
            except Exception as err:  # noqa: BLE001 - a damaged member or header: one sentence
                raise DatasetCorrupted(f"{what}: the array {key!r} is damaged ({type(err).__name__}: {err}).") from None
            if dtype.hasobject:
                raise DatasetCorrupted(f"{what}: the array {key!r} holds pickled Python objects; the kit never "
                                       "unpickles data (allow_pickle=False). Refusing it.")
            count = int(np.prod(shape, dtype=object))
            if len(blob) != member.file_size or count * dtype.itemsize != len(blob) - buf.tell():
                raise DatasetCorrupted(f"{what}: the array {key!r} declares shape {shape} of {dtype}, which does not "
                                       f"match the {len(blob) - buf.tell():,} bytes it holds.")
            array = np.frombuffer(blob, dtype=dtype, count=count, offset=buf.tell())
            out[key] = array.reshape(shape, order="F" if fortran else "C").copy()  # writable, like np.load
            budget -= len(blob)
    return out


def _npz(entry: DataFile, *keys: str) -> list[np.ndarray]:
    """The named arrays of a verified .npz file (hashed and parsed from the same bytes)."""
    arrays = npz_arrays(read_verified(entry), keys, entry.path)
    return [arrays[k] for k in keys]


def _load_mnist(split: str):
    _check_split("mnist", split, SPLITS)
    x, y = _npz(files("mnist")[0], f"x_{split}", f"y_{split}")
    return x, y.astype(np.int64)


def _load_pneumoniamnist(split: str):
    _check_split("pneumoniamnist", split, ("train", "val", "test"))
    x, y = _npz(files("pneumoniamnist")[0], f"{split}_images", f"{split}_labels")
    return x, y.reshape(-1).astype(np.int64)


def _split_indices(name: str, labels: np.ndarray, split: str) -> np.ndarray:
    """A fixed, stratified 80/20 train/test split, so every lab scores on the same held-out rows."""
    _check_split(name, split, SPLITS + ("all",))
    if split == "all":
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    return train if split == "train" else test


def _text_split(name: str, texts: list[str], labels: np.ndarray, split: str):
    idx = _split_indices(name, labels, split)
    return [texts[i] for i in idx], labels[idx]


def _load_sms_spam(split: str):
    text = read_verified(files("sms_spam")[0]).decode("utf-8")
    texts, labels = [], []
    # QUOTE_NONE: messages contain unbalanced quote characters.
    for row in csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE):
            labels.append(1 if row[0] == "spam" else 0)
            texts.append(row[1])
    return _text_split("sms_spam", texts, np.array(labels, dtype=np.int64), split)


def _load_rt_polarity(split: str):
    pos, neg = (read_verified(e).decode("utf-8") for e in files("rt_polarity"))
    positive, negative = pos.splitlines(), neg.splitlines()
    texts = positive + negative
    labels = np.array([1] * len(positive) + [0] * len(negative), dtype=np.int64)
    return _text_split("rt_polarity", texts, labels, split)


def _load_table(name: str, target: str, positive: str | int, split: str):
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(read_verified(files(name)[0])))
    labels = (frame.pop(target) == positive).astype(np.int64).to_numpy()
    frame = frame.drop(columns=[c for c in ("ID",) if c in frame.columns])
    idx = _split_indices(name, labels, split)
    return frame.iloc[idx], labels[idx]


def _load_cifar10(split: str):
    import zipfile

    from PIL import Image

    _check_split("cifar10", split, SPLITS)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images, labels = [], []
    entry = files("cifar10")[0]
    with zipfile.ZipFile(io.BytesIO(read_verified(entry))) as archive:
        for member in sorted(archive.infolist(), key=lambda m: m.filename):
            parts = member.filename.split("/")
            if len(parts) < 3 or parts[-3] != split or not member.filename.endswith(".jpg") \
                    or parts[-2] not in classes:
                continue
            if member.file_size > 64 << 10:  # a 32x32 JPEG is about 1 kB: checked before it is read
                raise DatasetCorrupted(f"{entry.path}: {member.filename} declares {member.file_size:,} bytes; "
                                       "a CIFAR-10 image is a few kB. Refusing the archive.")
            image = Image.open(io.BytesIO(archive.read(member)))
            if image.size != (32, 32):
                raise DatasetCorrupted(f"{entry.path}: {member.filename} is {image.size}, not 32x32.")
            images.append(np.asarray(image.convert("RGB")))
            labels.append(classes.index(parts[-2]))
    return np.stack(images), np.array(labels, dtype=np.int64)


def _load_cifar10_subset(split: str):
    """The kit's "CIFAR-10 (JPEG copy) subset" (labkit.cifar10.build_subset): 10k train / 2k test."""
    from . import cifar10

    _check_split("cifar10_subset", split, SPLITS)
    entry = files("cifar10_subset")[0]
    return cifar10.read_jpeg_zip(read_verified(entry), split, entry.path)


def _load_cifar10_binary(split: str):
    """The canonical binary release cifar-10-binary.tar.gz, parsed record by record (never the pickle)."""
    from . import cifar10

    _check_split("cifar10_binary", split, SPLITS)
    entry = files("cifar10_binary")[0]
    return cifar10.parse_binary_release(read_verified(entry), splits=(split,), what=entry.path)[split]


LOADERS = {
    "mnist": _load_mnist,
    "pneumoniamnist": _load_pneumoniamnist,
    "sms_spam": _load_sms_spam,
    "rt_polarity": _load_rt_polarity,
    "german_credit": lambda split: _load_table("german_credit", "creditability", "bad", split),
    "taiwan_credit": lambda split: _load_table("taiwan_credit", "class", 1, split),
    "cifar10": _load_cifar10,
    "cifar10_subset": _load_cifar10_subset,
    "cifar10_binary": _load_cifar10_binary,
}


def load(name: str, split: str = "train"):
    """Load a verified dataset split.

    Images (mnist, pneumoniamnist, cifar10, cifar10_subset, cifar10_binary): (x uint8 array (N, H, W[, 3]), y int64 array).
    Text (sms_spam: 1 = spam; rt_polarity: 1 = positive): (list of str, int64 array).
    Tables (german_credit: 1 = bad risk; taiwan_credit: 1 = default): (pandas DataFrame, int64 array).
    Text and tables also accept split="all"; their train/test split is a fixed stratified 80/20.
    """
    info(name)  # unknown names fail here, with the list of known ones
    return LOADERS[name](split)
