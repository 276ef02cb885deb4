"""Training and evaluation loops shared by every lab.

Images go in as numpy arrays (uint8 in 0..255, or floats already in [0, 1]); `to_tensors`
turns them into float tensors in [0, 1] shaped (N, C, H, W). `train_epoch` runs one epoch
and optionally replaces each batch by a perturbed one first (`perturb(model, x, y) -> x_adv`),
which is all adversarial training needs. `evaluate` measures accuracy, optionally under an
attack `attack(model, x, y) -> x_adv`. Loops that run for more than a moment show a tqdm
progress bar (pass `progress=False` to hide it).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

__all__ = ["to_tensors", "make_loader", "train_epoch", "evaluate", "predict", "fit", "Ramp", "triangle_schedule"]

Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _images_to_float(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        is_uint8 = t.dtype == torch.uint8
        t = t.float()
    else:
        arr = np.asarray(x)
        is_uint8 = arr.dtype == np.uint8
        if not (is_uint8 or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"Images must be uint8 (0..255) or floats in [0, 1]; got dtype {arr.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(arr)).float()
    if is_uint8:
        t = t / 255.0
    elif t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError(
            f"Float images must already be scaled to [0, 1]; these range from {t.min().item():.3g} "
            f"to {t.max().item():.3g}. Pass the uint8 images and let to_tensors scale them."
        )
    if t.dim() == 3:  # (N, H, W) grey-scale
        t = t.unsqueeze(1)
    elif t.dim() == 4:
        if t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):  # (N, H, W, C) -> (N, C, H, W)
            t = t.permute(0, 3, 1, 2).contiguous()
    else:
        raise ValueError(
            f"Images must be shaped (N, H, W) or (N, H, W, C) or (N, C, H, W); got {tuple(t.shape)}."
        )
    return t


def _labels(y, n_images: int) -> torch.Tensor:
    """Labels as a flat int64 tensor, one per image."""
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long().reshape(-1)
    if len(yt) != n_images:
        raise ValueError(f"{n_images} images but {len(yt)} labels.")
    return yt


def _is_table(x) -> bool:
    """A 2-D float array or tensor: rows of features (a 2-D uint8 array is a lone image, refused)."""
    dtype = x.dtype if isinstance(x, torch.Tensor) else np.asarray(x).dtype
    floating = dtype.is_floating_point if isinstance(x, torch.Tensor) else np.issubdtype(dtype, np.floating)
    return np.ndim(x) == 2 and floating


def _table_to_float(x) -> torch.Tensor:
    t = x.detach().cpu().float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
    if not torch.isfinite(t).all():
        raise ValueError("The feature table holds NaN or infinity; clean or impute it before training.")
    return t.contiguous()


def to_tensors(x, y=None):
    """Numpy images (and labels) -> float tensor (N, C, H, W) in [0, 1] (and int64 labels).

    uint8 images are divided by 255; float images must already lie in [0, 1]. A missing channel
    dimension is added, and channels-last images are moved to channels-first. A 2-D float input
    (N, d) is a table of features (already scaled by the caller) and passes as float32.
    Returns `x` alone when `y` is None, else `(x, y)`.
    """
    xt = _table_to_float(x) if _is_table(x) else _images_to_float(x)
    if y is None:
        return xt
    return xt, _labels(y, len(xt))


class _TableDataset(TensorDataset):
    """Feature-table rows fetched a batch at a time: one indexing op per batch instead of one per
    row, which is most of the cost of a small tabular model's epoch."""

    def __getitems__(self, indices):
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return [tuple(t[index] for t in self.tensors)]


def _collate_table(batch):
    return batch[0]


def make_loader(x, y, batch_size: int = 128, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader over `to_tensors(x, y)`; with `shuffle`, the order is fixed by `seed`."""
    xt, yt = to_tensors(x, y)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    if xt.dim() == 2:
        return DataLoader(_TableDataset(xt, yt), batch_size=batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=_collate_table)
    return DataLoader(TensorDataset(xt, yt), batch_size=batch_size, shuffle=shuffle, generator=generator)


class Ramp:
    """A value that grows linearly from `start` to `end` over `steps` calls, then stays at `end`.

    Each call returns the current value and advances one step, so a perturbation called once
    per training batch can ramp its epsilon up:
        eps = Ramp(end=0.3, steps=len(loader))      # 0 -> 0.3 over the first epoch
        perturb = lambda model, x, y: attack(model, x, y, eps=eps())
    """

    def __init__(self, end: float, steps: int, start: float = 0.0):
        if steps < 0:
            raise ValueError("steps must be >= 0")
        self.start, self.end, self.steps = float(start), float(end), int(steps)
        self.calls = 0

    @property
    def value(self) -> float:
        if self.steps == 0 or self.calls >= self.steps:
            return self.end
        return self.start + (self.end - self.start) * (self.calls + 1) / self.steps

    def __call__(self) -> float:
        v = self.value
        self.calls += 1
        return v

    def __repr__(self) -> str:
        return f"Ramp(start={self.start:g}, end={self.end:g}, steps={self.steps}, calls={self.calls})"


def triangle_schedule(optimizer: torch.optim.Optimizer, total_steps: int, peak_at: float = 0.4):
    """Learning rate rising linearly from 0 to the optimizer's lr over the first `peak_at` of
    `total_steps`, then falling linearly towards 0 (the last step still learns a little); the cyclic
    schedule Wong et al. 2020 used for fast adversarial training. Step it once per batch."""
    if total_steps < 1 or not 0 < peak_at < 1:
        raise ValueError("total_steps must be >= 1 and peak_at in (0, 1).")
    peak = peak_at * total_steps

    def factor(step: int) -> float:
        t = min(step + 1, total_steps)
        return t / peak if t <= peak else (total_steps + 1 - t) / (total_steps + 1 - peak)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress(iterable, desc: str, progress: bool, total: Optional[int] = None, leave: bool = True):
    return tqdm(iterable, desc=desc, total=total, disable=not progress, leave=leave, mininterval=0.5)


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device=None,
    perturb: Optional[Perturb] = None,
    desc: str = "train",
    loss_fn: Callable = F.cross_entropy,
    scheduler=None,
    progress: bool = True,
) -> dict:
    """Train `model` for one pass over `loader`; return {"loss": mean loss, "accuracy": fraction}.

    perturb: optional `perturb(model, x, y) -> x_adv`. When given, each batch is replaced by
        `perturb`'s output before the update (adversarial training). Gradients it leaves on
        the parameters are cleared, and the model is put back in training mode before the update.
    scheduler: optional learning-rate scheduler stepped once per batch (e.g. OneCycleLR).
    Accuracy is measured on the batches the model trained on (adversarial ones, with perturb).
    """
    device = device or next(model.parameters()).device
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = _progress(loader, desc, progress)
    for x, y in bar:
        x, y = x.to(device), y.to(device)
        if perturb is not None:
            x = perturb(model, x, y)
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"perturb must return a tensor; it returned {type(x).__name__}.")
            x = x.detach()
            model.train()
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = len(y)
        total_loss += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


def _image_batch(x) -> torch.Tensor:
    """x as it is when already a float (N, C, H, W) tensor (kept on its device), else to_tensors(x)."""
    if isinstance(x, torch.Tensor) and x.dtype.is_floating_point and x.dim() == 4:
        return x
    return to_tensors(x)


def _batches(x, y, batch_size: int):
    xt = _image_batch(x)
    yt = _labels(y, len(xt))
    for i in range(0, len(xt), batch_size):
        yield xt[i : i + batch_size], yt[i : i + batch_size]


def predict(model: nn.Module, x, device=None, batch_size: int = 1000) -> np.ndarray:
    """Predicted class for each image (numpy int64), in evaluation mode, without gradients."""
    device = device or next(model.parameters()).device
    xt = _image_batch(x)
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(xt), batch_size):
            out.append(model(xt[i : i + batch_size].to(device)).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def evaluate(
    model: nn.Module,
    x,
    y,
    device=None,
    attack: Optional[Perturb] = None,
    batch_size: int = 500,
    desc: Optional[str] = None,
    progress: bool = True,
) -> float:
    """Accuracy (a fraction in [0, 1]) of `model` on images `x` with labels `y`.

    x, y: numpy arrays (uint8 images are scaled) or tensors already shaped (N, C, H, W) in [0, 1].
    attack: optional `attack(model, x, y) -> x_adv`; then the accuracy is measured on its output
        (labels are passed so the attack can use them). The model is evaluated in eval mode and
        restored to its previous mode afterwards.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, seen = 0, 0
    n = len(x)
    bar = _progress(
        _batches(x, y, batch_size),
        desc or ("attack" if attack is not None else "evaluate"),
        progress,
        total=(n + batch_size - 1) // batch_size,
        leave=False,
    )
    try:
        for xb, yb in bar:
            xb, yb = xb.to(device), yb.to(device)
            if attack is not None:
                xb = attack(model, xb, yb).detach()
                model.eval()
            with torch.no_grad():
                correct += (model(xb).argmax(1) == yb).sum().item()
            seen += len(yb)
    finally:
        model.train(was_training)
    return correct / max(seen, 1)


def fit(
    model: nn.Module,
    x,
    y,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    device=None,
    perturb: Optional[Perturb] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    schedule: Optional[str] = None,
    seed: int = 0,
    x_val=None,
    y_val=None,
    progress: bool = True,
    verbose: bool = True,
) -> list[dict]:
    """Train `model` for `epochs` epochs (Adam at `lr` unless an optimizer is given).

    schedule: None for a constant learning rate, or "triangle" for `triangle_schedule` (0 -> lr
        -> 0 over all the epochs, stepped per batch), which reaches a given accuracy in fewer epochs.

    Returns one dict per epoch: loss, accuracy (on the training batches), seconds, and
    val_accuracy when `x_val`/`y_val` are given. With `verbose`, prints one line per epoch.
    """
    device = device or next(model.parameters()).device
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    loader = make_loader(x, y, batch_size=batch_size, shuffle=True, seed=seed)
    if schedule not in (None, "triangle"):
        raise ValueError(f"Unknown schedule {schedule!r}; use None or 'triangle'.")
    scheduler = triangle_schedule(optimizer, epochs * len(loader)) if schedule == "triangle" else None
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        stats = train_epoch(model, loader, optimizer, device, perturb=perturb, scheduler=scheduler,
                            desc=f"epoch {epoch}/{epochs}", progress=progress)
        stats["seconds"] = time.perf_counter() - start
        stats["epoch"] = epoch
        if x_val is not None:
            stats["val_accuracy"] = evaluate(model, x_val, y_val, device, progress=False)
        history.append(stats)
        if verbose:
            line = f"epoch {epoch}: loss {stats['loss']:.3f}, train acc {stats['accuracy']:.3f}"
            if "val_accuracy" in stats:
                line += f", val acc {stats['val_accuracy']:.3f}"
            print(line + f" ({stats['seconds']:.0f} s)")
    return history
