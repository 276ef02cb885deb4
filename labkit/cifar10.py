"""CIFAR-10 files: the canonical binary release, the JPEG copy, and the subset the kit ships.

- `parse_binary_release(data)`: the bytes of `cifar-10-binary.tar.gz` (University of Toronto, the
  "binary version" for C programs) -> {"train": (x, y), "test": (x, y)}. Each record of
  `data_batch_1..5.bin` / `test_batch.bin` is 1 label byte then 3072 pixel bytes (1024 red, 1024
  green, 1024 blue, rows top to bottom). Only those six members are read, from memory, with their
  sizes checked first; nothing is extracted to disk and nothing is unpickled (the "python version"
  of the release is a pickle and is never used).
- `read_jpeg_zip(data, split)`: a zip of `<split>/<class>/<name>.jpg` files -> (x, y); the layout of
  the JPEG copy and of the kit's subset.
- `build_subset(...)`: the "CIFAR-10 (JPEG copy) subset" shipped in data/: a stratified, seeded
  choice of images from the JPEG copy, the original JPEG bytes re-packed in a stored zip with fixed
  timestamps (so the same inputs give the same bytes and sha256). Test images with an exact pixel
  duplicate in the whole training split, or a near duplicate (8x8 thumbnails within a root-mean-square
  difference of `near_duplicate` out of 255), are left out, so scores on the subset's test split are held out from
  every model trained on the JPEG copy's training split.

`python -m labkit.cifar10 subset OUT.zip [--source cifar10-jpeg.zip]` rebuilds the shipped subset.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "RECORD_BYTES", "parse_binary_release", "parse_binary_batch", "read_jpeg_zip",
           "build_subset", "duplicates_against", "main"]

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECORD_BYTES = 1 + 32 * 32 * 3
BINARY_MEMBERS = {"train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
                  "test": ["cifar-10-batches-bin/test_batch.bin"]}
BATCH_RECORDS = 10_000
MAX_JPEG_BYTES = 64 << 10


class CifarFormatError(ValueError):
    """Bytes that are not what a CIFAR-10 file of the expected format holds."""


def parse_binary_batch(blob: bytes, what: str = "batch") -> tuple[np.ndarray, np.ndarray]:
    """One .bin file of the binary release -> (uint8 images (N, 32, 32, 3), int64 labels)."""
    if len(blob) == 0 or len(blob) % RECORD_BYTES:
        raise CifarFormatError(f"{what} holds {len(blob):,} bytes, not a whole number of {RECORD_BYTES}-byte "
                               "records (1 label byte + 3072 pixel bytes); the file is truncated or not CIFAR-10 binary.")
    records = np.frombuffer(blob, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise CifarFormatError(f"{what} has a label {labels.max()} outside 0..9; it is not CIFAR-10 "
                               "(CIFAR-100's binary records carry two label bytes).")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return images, labels


def parse_binary_release(data: bytes, splits=("train", "test"), what: str = "cifar-10-binary.tar.gz",
                         expect_records: int | None = BATCH_RECORDS) -> dict:
    """The canonical binary release (the .tar.gz bytes) -> {split: (x, y)}; see the module docstring."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CifarFormatError(f"{what} is not a gzip-compressed tar archive ({err}).") from None
    out = {}
    with archive:
        for split in splits:
            if split not in BINARY_MEMBERS:
                raise ValueError(f"The binary release has the splits train and test; got {split!r}.")
            xs, ys = [], []
            for name in BINARY_MEMBERS[split]:
                try:
                    member = archive.getmember(name)
                except KeyError:
                    raise CifarFormatError(f"{what} has no member {name}; is it the binary version "
                                           "(cifar-10-binary.tar.gz), not the python or matlab one?") from None
                if not member.isfile():
                    raise CifarFormatError(f"{what}: {name} is not a regular file.")
                if expect_records is not None and member.size != expect_records * RECORD_BYTES:
                    raise CifarFormatError(f"{what}: {name} declares {member.size:,} bytes; a batch of "
                                           f"{expect_records:,} records is {expect_records * RECORD_BYTES:,}.")
                with archive.extractfile(member) as f:
                    blob = f.read(member.size + 1)
                x, y = parse_binary_batch(blob, f"{what}: {name}")
                xs.append(x)
                ys.append(y)
            out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def _jpeg_members(archive: zipfile.ZipFile, split: str, what: str):
    for member in sorted(archive.infolist(), key=lambda m: m.filename):
        parts = member.filename.split("/")
        if len(parts) < 3 or parts[-3] != split or not member.filename.endswith(".jpg") or parts[-2] not in CLASSES:
            continue
        if member.file_size > MAX_JPEG_BYTES:  # a 32x32 JPEG is about 1 kB: checked before it is read
            raise CifarFormatError(f"{what}: {member.filename} declares {member.file_size:,} bytes; a CIFAR-10 "
                                   "image is a few kB. Refusing the archive.")
        yield member, CLASSES.index(parts[-2])


def _decode(blob: bytes, name: str, what: str) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(blob))
    if image.size != (32, 32):
        raise CifarFormatError(f"{what}: {name} is {image.size}, not 32x32.")
    return np.asarray(image.convert("RGB"))


def read_jpeg_zip(data: bytes, split: str, what: str = "archive") -> tuple[np.ndarray, np.ndarray]:
    """Images of one split of a `<split>/<class>/<name>.jpg` zip, in file-name order -> (x, y)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise CifarFormatError(f"{what} is not a zip archive ({err}).") from None
    images, labels = [], []
    with archive:
        for member, label in _jpeg_members(archive, split, what):
            images.append(_decode(archive.read(member), member.filename, what))
            labels.append(label)
    if not images:
        raise CifarFormatError(f"{what} has no {split}/<class>/*.jpg images.")
    return np.stack(images), np.array(labels, dtype=np.int64)


def _pixel_key(image: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()


def duplicates_against(candidates: np.ndarray, reference: np.ndarray, near_duplicate: float = 0.0,
                       batch: int = 512) -> dict:
    """Which `candidates` images also occur in `reference`: {"exact": bool mask (identical pixels),
    "near": bool mask (root-mean-square difference of the 8x8 thumbnails below `near_duplicate` of
    255, a cheap screen for re-encoded copies), "nearest": that distance to the closest reference}."""
    ref_keys = {_pixel_key(im) for im in reference}
    exact = np.array([_pixel_key(im) in ref_keys for im in candidates], dtype=bool)
    near = np.zeros(len(candidates), dtype=bool)
    nearest = np.full(len(candidates), np.inf)
    if near_duplicate > 0:
        def thumbs(x):
            return x.reshape(len(x), 8, 4, 8, 4, 3).astype(np.float32).mean((2, 4)).reshape(len(x), -1)

        c, r = thumbs(candidates), thumbs(reference)
        r2 = (r ** 2).sum(1)
        for i in range(0, len(c), batch):
            block = c[i:i + batch]
            d2 = (block ** 2).sum(1)[:, None] + r2[None, :] - 2 * block @ r.T
            nearest[i:i + batch] = np.sqrt(np.maximum(d2.min(1), 0) / c.shape[1])
        near = nearest < near_duplicate
    return {"exact": exact, "near": near, "nearest": nearest}


def _stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator, allowed: np.ndarray | None = None):
    chosen = []
    for c in range(len(CLASSES)):
        pool = np.flatnonzero((labels == c) & (allowed if allowed is not None else True))
        if len(pool) < per_class:
            raise ValueError(f"Class {CLASSES[c]} has {len(pool)} usable images; {per_class} were asked for.")
        chosen.append(rng.choice(pool, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def build_subset(source: bytes, out: Path, n_train: int = 10_000, n_test: int = 2_000, seed: int = 0,
                 near_duplicate: float = 8.0, what: str = "cifar10-jpeg.zip") -> dict:
    """Write the stratified subset of a JPEG-copy zip to `out`; return what was done (counts, sha256,
    duplicates left out). Train images come from the source's train split, test images from its test
    split after removing those that duplicate any image of the whole train split."""
    if n_train % len(CLASSES) or n_test % len(CLASSES):
        raise ValueError("n_train and n_test must be multiples of 10 (the subset is stratified by class).")
    archive = zipfile.ZipFile(io.BytesIO(source))
    members, decoded = {}, {}
    for split in ("train", "test"):
        pairs = list(_jpeg_members(archive, split, what))
        members[split] = pairs
        decoded[split] = np.stack([_decode(archive.read(m), m.filename, what) for m, _ in pairs])
    y = {s: np.array([label for _, label in members[s]], dtype=np.int64) for s in members}
    dup = duplicates_against(decoded["test"], decoded["train"], near_duplicate=near_duplicate)
    within = np.zeros(len(y["test"]), dtype=bool)
    seen = set()
    for i, im in enumerate(decoded["test"]):
        key = _pixel_key(im)
        within[i] = key in seen
        seen.add(key)
    allowed = ~(dup["exact"] | dup["near"] | within)
    rng = np.random.default_rng(seed)
    chosen = {"train": _stratified(y["train"], n_train // len(CLASSES), rng),
              "test": _stratified(y["test"], n_test // len(CLASSES), rng, allowed)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for split in ("train", "test"):
            for i in chosen[split]:
                member, _ = members[split][i]
                info = zipfile.ZipInfo(member.filename, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                z.writestr(info, archive.read(member))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"path": str(out), "sha256": digest, "bytes": out.stat().st_size, "seed": seed,
            "train": len(chosen["train"]), "test": len(chosen["test"]),
            "test_exact_duplicates_of_train": int(dup["exact"].sum()),
            "test_near_duplicates_of_train": int((dup["near"] & ~dup["exact"]).sum()),
            "test_duplicates_within_test": int(within.sum()), "near_duplicate_threshold": near_duplicate,
            "test_candidates": len(y["test"]), "test_allowed": int(allowed.sum())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit.cifar10", description="Rebuild the CIFAR-10 (JPEG copy) subset.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("subset", help="write the stratified, de-duplicated subset zip")
    s.add_argument("out")
    s.add_argument("--train", type=int, default=10_000)
    s.add_argument("--test", type=int, default=2_000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--near-duplicate", type=float, default=8.0)
    args = p.parse_args(argv)
    from . import datasets

    source = datasets.read_verified(datasets.files("cifar10")[0])
    result = build_subset(source, Path(args.out), args.train, args.test, args.seed, args.near_duplicate)
    for k, v in result.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
