"""Model checkpoints as safetensors files: written with their training record, read only after
their sha256 matches, and never unpickled.

A checkpoint is two files: `NAME.safetensors` (the tensors, plus string metadata naming the
registered model and its constructor arguments) and `NAME.json` (the sidecar: sha256 of the
.safetensors file, the command that trained it, the data and its sha256, seed, epochs, measured
accuracy, wall time). The safetensors format holds raw tensor bytes and a JSON header, so reading
one cannot run code (unlike `torch.load` of a pickle).

`load_model(path, sha256)` hashes the bytes it read and refuses a mismatch before it parses them
(`CheckpointCorrupted`, naming the file and the fix). The kit's shipped weights are declared in
data/MANIFEST.toml like its datasets; `load_shipped(name)` reads them through
`labkit.datasets.read_verified`, so the manifest's hash is the one checked.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from . import datasets, models

__all__ = ["CheckpointError", "CheckpointCorrupted", "save", "load_model", "load_shipped", "shipped_record", "model_from_bytes",
           "sidecar_path", "read_sidecar"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: its error says what is wrong and how to fix it."""


class CheckpointCorrupted(CheckpointError):
    """The checkpoint's bytes do not match the sha256 they must have."""


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def save(model: nn.Module, path, model_name: str, model_kwargs: dict | None = None, record: dict | None = None) -> str:
    """Write `model`'s state dict to `path` (.safetensors) and its record to the .json sidecar;
    return the sha256 of the .safetensors file (also stored in the sidecar)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"A checkpoint file name ends in .safetensors; got {path.name}.")
    models.MODELS[model_name]  # noqa: B018 - unknown names fail here, before anything is written
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"model": model_name, "model_kwargs": json.dumps(model_kwargs or {}, sort_keys=True), "format": "labkit-1"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = {"file": path.name, "sha256": digest, "model": model_name, "model_kwargs": model_kwargs or {},
               **(record or {})}
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2, sort_keys=False) + "\n")
    return digest


def read_sidecar(path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(f"{path} has no sidecar {side.name}; it was not written by labkit.checkpoints.save.")
    return json.loads(side.read_text())


def model_from_bytes(data: bytes, what: str = "checkpoint") -> nn.Module:
    """Build the registered model a safetensors blob names and load its tensors (strict: every
    parameter present, none extra). The blob must already be verified by its caller."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    header_len = int.from_bytes(data[:8], "little")
    if len(data) < 10 or header_len > len(data) - 8 or data[8:9] != b"{":
        if data[:2] in (b"PK", b"\x80\x02"):  # torch.save: a zip of pickles, or a bare pickle (protocol 2)
            raise CheckpointError(f"{what} is a torch.save (pickle) file, not safetensors; the kit never unpickles "
                                  "model files. Convert it where you trust its origin: "
                                  "safetensors.torch.save_file(model.state_dict(), path).")
        raise CheckpointError(f"{what} is not a safetensors file (no JSON header after the 8-byte length).")
    try:
        header = json.loads(data[8:8 + header_len])
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{what} is not a valid safetensors file ({err}).") from None
    meta = header.get("__metadata__") or {}
    name = meta.get("model")
    if name not in models.MODELS:
        raise CheckpointError(f"{what} names the model {name!r}, which labkit.models does not register "
                              f"(known: {', '.join(sorted(models.MODELS))}).")
    model = models.build(name, **json.loads(meta.get("model_kwargs", "{}")))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{what} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    return model.eval()


def load_model(path, sha256: str) -> nn.Module:
    """The model stored at `path` after its bytes matched `sha256` (refused otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}. Train one with `labkit pretrain` or restore the kit's copy "
                              "with `git checkout -- data/`.")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CheckpointCorrupted(
            f"{path} does not match its sha256 (expected {sha256[:12]}..., got {actual[:12]}...): the weights were "
            "changed or truncated, so they are refused before being read. Restore the file (`git checkout -- "
            f"data/`) or retrain it with the command in {sidecar_path(path).name}.")
    return model_from_bytes(data, str(path))


def load_shipped(name: str) -> nn.Module:
    """A model the kit ships, declared in data/MANIFEST.toml (e.g. "resnet20_cifar10"): its bytes
    are read once, checked against the manifest's sha256, then parsed as safetensors."""
    entry = next((f for f in datasets.files(name) if f.path.endswith(".safetensors")), None)
    if entry is None:
        raise CheckpointError(f"{name!r} in data/MANIFEST.toml lists no .safetensors file.")
    try:
        data = datasets.read_verified(entry, fetch=False)
    except datasets.DatasetCorrupted as err:
        raise CheckpointCorrupted(f"The weights {name!r} were refused before being read: {err}") from None
    return model_from_bytes(data, entry.path)


def shipped_record(name: str) -> dict:
    """The training record (.json sidecar) of weights the kit ships, read after its sha256 matched
    the manifest: the command that trained them, data, seed, epochs, measured accuracy, wall time."""
    entry = next((f for f in datasets.files(name) if f.path.endswith(".json")), None)
    if entry is None:
        raise CheckpointError(f"{name!r} in data/MANIFEST.toml lists no .json training record.")
    return json.loads(datasets.read_verified(entry, fetch=False))
