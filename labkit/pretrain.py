"""Train the CIFAR-10 ResNets the kit ships (`labkit pretrain`), so anyone can reproduce them.

Two recipes on the same model (`labkit.models.ResNetCIFAR`, ResNet-20 by default):
- clean: SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128, one-cycle learning rate
  (peak `lr`), random crop (zero padding 4) and horizontal flip, cross-entropy.
- robust (`--adv fgsm_rs`): the same loop on FGSM-with-random-start examples (Wong, Rice and
  Kolter 2020, "Fast is better than free": eps 8/255, step 10/255), optionally starting from a
  clean checkpoint (`--init`) and with epsilon ramped up over the first epochs.

A validation slice is held out of the training split (never trained on): after every epoch the
clean accuracy and the PGD-7 accuracy (eps 8/255, step 2/255) on it are logged. FGSM training can
overfit catastrophically (PGD accuracy collapsing within an epoch while FGSM accuracy climbs); the
checkpoint kept is the epoch with the best validation PGD accuracy (Wong et al.'s early stopping),
and the whole per-epoch history goes into the sidecar. The final numbers are measured on the test
split. Everything is seeded; on a CPU with bfloat16 support `--bf16` runs the forward and backward
passes under `torch.autocast` (measured about 2x faster on a 2-core AVX512-BF16 machine).
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import attacks, checkpoints, datasets, models
from .train import evaluate, to_tensors

__all__ = ["augment", "split_validation", "train_model", "main", "build_parser"]

EPS = 8 / 255


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) and random horizontal flip of a float batch (N, C, H, W)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def split_validation(y: np.ndarray, size: int, seed: int):
    """(train indices, validation indices): a stratified validation slice of `size` images."""
    if size <= 0:
        return np.arange(len(y)), np.zeros(0, dtype=np.int64)
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(np.arange(len(y)), test_size=size, random_state=seed, stratify=y)
    return np.sort(train), val  # the validation order stays shuffled: its first images span every class


def _pgd_accuracy(model, x, y, steps: int = 7, eps: float = EPS, step: float = 2 / 255) -> float:
    if len(x) == 0:
        return float("nan")
    attack = lambda m, xb, yb: attacks.pgd(m, xb, yb, eps, step, steps)  # noqa: E731
    return evaluate(model, x, y, attack=attack, batch_size=250, progress=False)


def _fgsm_accuracy(model, x, y, eps: float = EPS) -> float:
    if len(x) == 0:
        return float("nan")
    return evaluate(model, x, y, attack=lambda m, xb, yb: attacks.fgsm_reference(m, xb, eps, yb),
                    batch_size=250, progress=False)


def train_model(model: nn.Module, x_train, y_train, epochs: int, *, x_val=None, y_val=None, batch_size: int = 128,
                lr: float = 0.1, weight_decay: float = 5e-4, seed: int = 0, adv: str | None = None,
                eps: float = EPS, alpha: float = 10 / 255, eps_ramp_epochs: float = 0.0, bf16: bool = False,
                val_pgd: int = 500, log=print, progress: bool = True) -> tuple[nn.Module, list[dict]]:
    """Train `model` (in place) and return (the kept model, per-epoch history).

    x_train: uint8 images (N, 32, 32, 3) or a float tensor (N, 3, 32, 32); y_train: labels.
    adv: None (clean) or "fgsm_rs". With a validation set, the model kept is the epoch with the
    best validation PGD accuracy for adversarial training, the last epoch for clean training.
    """
    if adv not in (None, "fgsm_rs"):
        raise ValueError(f"adv must be None (clean training) or 'fgsm_rs'; got {adv!r}.")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1; got {epochs}.")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    attack_gen = gen if device.type == "cpu" else None  # a CPU generator cannot draw on a GPU
    xt, yt = to_tensors(x_train, y_train)
    xt = (xt * 255).round().to(torch.uint8)  # keep the training set as bytes: 4x less memory
    has_val = x_val is not None and len(x_val) > 0
    if has_val:
        xv, yv = (t.to(device) for t in to_tensors(x_val, y_val))
    steps_per_epoch = (len(xt) + batch_size - 1) // batch_size
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.25 if adv is None else 0.4, anneal_strategy="linear",
                                                div_factor=25.0, final_div_factor=1e3)
    # channels-last helps GPUs' tensor cores; on CPUs it buys little, and torch 2.13's oneDNN crashes in the
    # backward pass of a channels-last convolution on one thread of an AVX2-only CPU
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    history, best, best_state = [], -1.0, None
    ramp_steps = int(eps_ramp_epochs * steps_per_epoch)
    step_count = 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{epochs}", disable=not progress, mininterval=5)
        for i in bar:
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = augment(xt[idx].float() / 255, gen).to(device).contiguous(memory_format=memory_format)
            yb = yt[idx].to(device)
            if adv == "fgsm_rs":
                e = eps * min(1.0, (step_count + 1) / ramp_steps) if ramp_steps else eps
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    xb = attacks.fgsm_random_start(model, xb, yb, e, alpha * e / eps, generator=attack_gen)
                xb = xb.float().contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step_count += 1
            total_loss += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        row = {"epoch": epoch, "loss": round(total_loss / seen, 4), "train_accuracy": round(correct / seen, 4),
               "seconds": round(time.perf_counter() - start, 1), "load": round(os.getloadavg()[0], 2)}
        if has_val:
            row["val_clean"] = round(evaluate(model, xv, yv, progress=False), 4)
            row["val_fgsm"] = round(_fgsm_accuracy(model, xv[:val_pgd], yv[:val_pgd]), 4)
            row["val_pgd7"] = round(_pgd_accuracy(model, xv[:val_pgd], yv[:val_pgd]), 4)
            score = row["val_pgd7"] if adv else row["val_clean"]
            if adv is None or score > best:
                best, best_state = score, copy.deepcopy(model.state_dict())
                row["kept"] = True
        history.append(row)
        log("  ".join(f"{k} {v}" for k, v in row.items()))
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval().to(memory_format=torch.contiguous_format), history


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit pretrain", description="Train a CIFAR-10 ResNet the way the kit's "
                                "shipped weights were trained; writes NAME.safetensors and NAME.json.")
    p.add_argument("output", help="the .safetensors file to write (its .json sidecar lands beside it)")
    p.add_argument("--dataset", default="cifar10", help="a CIFAR-10 dataset of the manifest (cifar10: the JPEG "
                   "copy, 50k/10k; cifar10_subset: the kit's subset; cifar10_binary: the canonical release)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak of the one-cycle learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adv", choices=["fgsm_rs"], default=None, help="adversarial training (FGSM, random start)")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf radius in pixels out of 255 (default 8)")
    p.add_argument("--alpha", type=float, default=10.0, help="FGSM-RS step in pixels out of 255 (default 10)")
    p.add_argument("--eps-ramp-epochs", type=float, default=0.0, help="ramp epsilon from 0 over this many epochs")
    p.add_argument("--init", help="start from this .safetensors checkpoint (its sidecar's sha256 is checked)")
    p.add_argument("--val-size", type=int, default=1000, help="images held out of the training split to "
                   "monitor clean and PGD accuracy per epoch")
    p.add_argument("--train-limit", type=int, default=0, help="train on the first N images only (tests)")
    p.add_argument("--test-limit", type=int, default=0, help="measure on the first N test images only (tests)")
    p.add_argument("--val-pgd", type=int, default=500, help="validation images attacked (FGSM, PGD-7) per epoch")
    p.add_argument("--test-pgd", type=int, default=1000, help="test images for the final PGD-10 accuracy")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the CPU (about 2x faster there)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _data_sha256(name: str) -> dict:
    out = {}
    for entry in datasets.files(name):
        out[entry.path] = entry.sha256
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    t0 = time.perf_counter()
    x, y = datasets.load(args.dataset, "train")
    x_test, y_test = datasets.load(args.dataset, "test")
    pick = np.random.default_rng(args.seed)  # the archives are sorted by class: limits take a random sample
    if args.train_limit:
        keep = np.sort(pick.permutation(len(y))[:args.train_limit])
        x, y = x[keep], y[keep]
    if args.test_limit:
        keep = np.sort(pick.permutation(len(y_test))[:args.test_limit])
        x_test, y_test = x_test[keep], y_test[keep]
    else:  # PGD on the first --test-pgd images must see every class
        keep = np.random.default_rng(0).permutation(len(y_test))
        x_test, y_test = x_test[keep], y_test[keep]
    tr, va = split_validation(y, min(args.val_size, len(y) // 5), args.seed)
    print(f"data {args.dataset}: {len(tr)} train, {len(va)} validation (held out), {len(x_test)} test; "
          f"loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    kwargs = {"depth": args.depth, "width": args.width}
    if args.init:
        side = checkpoints.read_sidecar(args.init)
        model = checkpoints.load_model(args.init, side["sha256"])
        kwargs = side.get("model_kwargs", kwargs)
        init = {"file": Path(args.init).name, "sha256": side["sha256"]}
    else:
        torch.manual_seed(args.seed)
        model = models.build(args.model, **kwargs)
        init = None
    eps, alpha = args.eps / 255, args.alpha / 255
    model, history = train_model(
        model, x[tr], y[tr], args.epochs, x_val=x[va], y_val=y[va], batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, adv=args.adv, eps=eps, alpha=alpha,
        eps_ramp_epochs=args.eps_ramp_epochs, bf16=args.bf16, val_pgd=args.val_pgd, log=lambda s: print(s, flush=True),
        progress=not args.no_progress)
    train_seconds = time.perf_counter() - t0
    xt, yt = to_tensors(x_test, y_test)
    clean = evaluate(model, xt, yt, progress=False)
    n_pgd = min(args.test_pgd, len(xt))
    torch.manual_seed(args.seed)
    pgd10 = _pgd_accuracy(model, xt[:n_pgd], yt[:n_pgd], steps=10, eps=EPS, step=2 / 255)
    record = {
        "command": "labkit pretrain " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[2:])),
        "data": {"dataset": args.dataset, "title": datasets.info(args.dataset).get("title", args.dataset),
                 "files_sha256": _data_sha256(args.dataset), "train_images": int(len(tr)),
                 "validation_images": int(len(va)), "test_images": int(len(xt))},
        "seed": args.seed, "epochs": args.epochs, "recipe": {
            "optimizer": "SGD Nesterov momentum 0.9", "lr_peak": args.lr, "schedule": "one-cycle, linear",
            "weight_decay": args.weight_decay, "batch_size": args.batch_size,
            "augmentation": "random crop (zero pad 4), horizontal flip",
            "adversarial": None if args.adv is None else {"method": "FGSM with random start (Wong et al. 2020)",
                                                          "eps": f"{args.eps:g}/255", "alpha": f"{args.alpha:g}/255",
                                                          "eps_ramp_epochs": args.eps_ramp_epochs},
            "init": init, "bf16_autocast": args.bf16,
            "kept_epoch": next((h["epoch"] for h in reversed(history) if h.get("kept")), args.epochs)},
        "measured": {"test_clean_accuracy": round(clean, 4), "test_pgd10_accuracy": round(pgd10, 4),
                     "test_pgd10_images": n_pgd, "pgd10": "L-inf 8/255, step 2/255, 10 steps, 1 random start"},
        "history": history,
        "wall_time_s": round(train_seconds, 1), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
    }
    digest = checkpoints.save(model, args.output, args.model, kwargs, record)
    print(f"test clean {clean:.4f}, PGD-10 {pgd10:.4f} on {n_pgd}; wrote {args.output} (sha256 {digest}) "
          f"in {train_seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
