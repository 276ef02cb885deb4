"""Small PyTorch models the labs train, written out in plain `torch.nn` (no torchvision).

Each model is a `torch.nn.Module` whose input is a float batch in [0, 1] shaped
(N, channels, height, width) and whose output is one logit per class (no softmax).
`build(name)` creates a model by its registry name so a notebook's parameters cell can
choose one with a string; `count_parameters(model)` reports its size.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["SmallCNN", "MODELS", "build", "count_parameters", "register"]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Class decorator: make a model available to `build(name)`."""

    def decorator(cls):
        if name in MODELS:
            raise ValueError(f"A model named {name!r} is already registered.")
        MODELS[name] = cls
        return cls

    return decorator


@register("small_cnn")
class SmallCNN(nn.Module):
    """A small convolutional network for 28x28 grey-scale digits (MNIST and look-alikes).

    conv 3x3 (32 channels, padding 1), ReLU, max-pool 2 -> conv 3x3 (64 channels, padding 1),
    ReLU, max-pool 2 -> fully connected 128, ReLU -> fully connected `num_classes`.
    About 0.42 M parameters. Input: (N, in_channels, 28, 28) floats in [0, 1]; output: logits.
    Trains to about 98% MNIST test accuracy in one epoch on 60k images (Adam, lr 1e-3,
    batch 128), about 20 s per epoch on a 2-core CPU.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: int = 128):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"SmallCNN pools twice by 2, so image_size must be a multiple of 4 (got {image_size}).")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        self.in_channels = in_channels
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SmallCNN expects a batch shaped (N, {self.in_channels}, {self.image_size}, {self.image_size}); "
                f"got {tuple(x.shape)}. labkit.train.to_tensors adds the channel dimension for you."
            )
        return self.classifier(self.features(x))


def build(name: str, **kwargs) -> nn.Module:
    """Create a registered model by name, e.g. `build("small_cnn")`."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.") from None
    return factory(**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """The number of (trainable) parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@register("tanh_cnn")
class TanhCNN(nn.Module):
    """The small tanh network of Opacus' MNIST example and Papernot et al. / Tramer and Boneh (2021),
    the usual model for differentially private training of 28x28 grey-scale images.

    conv 8x8 stride 2 (16 channels, padding 3), tanh, max-pool 2 (stride 1) -> conv 4x4 stride 2
    (32 channels), tanh, max-pool 2 (stride 1) -> fully connected 32, tanh -> `num_classes`.
    About 26 k parameters. No BatchNorm (batch statistics mix examples, which DP-SGD forbids);
    tanh instead of ReLU (bounded activations keep per-example gradients small, so clipping
    loses less; Papernot et al. 2021). Input: (N, 1, 28, 28) floats in [0, 1]; `mean` and `std`
    are fixed public constants (MNIST's by default), not statistics of private data.
    """

    def __init__(self, num_classes: int = 10, mean: float = 0.1307, std: float = 0.3081):
        super().__init__()
        self.mean, self.std = float(mean), float(std)
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=8, stride=2, padding=3),
            nn.Tanh(),
            nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, kernel_size=4, stride=2),
            nn.Tanh(),
            nn.MaxPool2d(2, 1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(
                f"TanhCNN expects a batch shaped (N, 1, 28, 28); got {tuple(x.shape)}. "
                "labkit.train.to_tensors adds the channel dimension for you."
            )
        return self.classifier(self.features((x - self.mean) / self.std))
__all__.append("TanhCNN")


# ---------------------------------------------------------------------------------------------
# Text: a vocabulary built from training messages, and a small embedding + mean-pool + MLP
# classifier whose penultimate representation is easy to read (poisoning lab).
# ---------------------------------------------------------------------------------------------
import re as _re
from collections import Counter as _Counter
from collections import OrderedDict as _OrderedDict

_TOKEN = _re.compile(r"[a-z0-9£$€]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; digit runs of 5 or more (phone numbers, codes) become `<num>`."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str; got {type(text).__name__}.")
    return ["<num>" if t.isdigit() and len(t) >= 5 else t for t in _TOKEN.findall(text.lower())]


class Vocabulary:
    """Token <-> id map built from training texts only (no downloads). Id 0 pads, id 1 is unknown."""

    PAD, UNK = 0, 1

    def __init__(self, texts, min_freq: int = 1, max_size: int | None = None):
        if isinstance(texts, str):
            raise TypeError("Vocabulary expects a list of messages, not one string.")
        counts = _Counter(tok for text in texts for tok in tokenize(text))
        kept = [t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_freq]
        if max_size is not None:
            kept = kept[: max(0, max_size - 2)]
        self.itos = ["<pad>", "<unk>"] + kept
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, texts, max_len: int = 64):
        """Messages -> int64 array (N, max_len) of token ids, padded with 0, cut after max_len tokens."""
        import numpy as np

        if isinstance(texts, str):
            texts = [texts]
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1; got {max_len}.")
        out = np.zeros((len(texts), max_len), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.stoi.get(t, self.UNK) for t in tokenize(text)][:max_len]
            out[i, : len(ids)] = ids
        return out


class PooledEmbedding(nn.Module):
    """Embed token ids (N, L) and pool over the non-padding positions -> (N, dim): "max" takes
    each dimension's largest value (a single telling word cannot be diluted by a long message),
    "mean" averages."""

    def __init__(self, vocab_size: int, dim: int, pool: str = "max"):
        super().__init__()
        if pool not in ("sum", "mean", "max"):
            raise ValueError(f"pool must be 'sum', 'mean' or 'max'; got {pool!r}.")
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pool = pool

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"PooledEmbedding expects token ids shaped (N, L); got {tuple(ids.shape)}. "
                             "Encode messages with Vocabulary.encode.")
        if ids.dtype.is_floating_point:  # ART hands its models float32 arrays; the ids are whole numbers
            ids = ids.round().long()
        mask = (ids != 0).unsqueeze(-1)
        emb = self.embedding(ids)
        if self.pool == "sum":
            return (emb * mask).sum(1)
        if self.pool == "mean":
            return (emb * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = emb.masked_fill(~mask, float("-inf")).max(1).values
        return torch.where(mask.any(1), pooled, torch.zeros_like(pooled))  # an empty message pools to 0


@register("text_mlp")
class TextClassifier(nn.Module):
    """Embedding (dim 64) -> max (or mean) over tokens -> LayerNorm -> Linear(hidden) -> ReLU -> Linear(num_classes).

    `representation` (an nn.Sequential: embed, norm, hidden, relu) maps token ids (N, L) to the
    penultimate activations (N, hidden), the features that spectral signatures and activation
    clustering inspect; `head` maps them to logits. Input: int64 ids from `Vocabulary.encode`.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden: int = 64, num_classes: int = 2,
                 pool: str = "max"):
        super().__init__()
        if vocab_size < 3:
            raise ValueError(f"vocab_size must count the padding and unknown tokens too; got {vocab_size}.")
        self.representation = nn.Sequential(_OrderedDict(
            embed=PooledEmbedding(vocab_size, embed_dim, pool),
            norm=nn.LayerNorm(embed_dim),
            hidden=nn.Linear(embed_dim, hidden),
            relu=nn.ReLU(),
        ))
        self.head = nn.Linear(hidden, num_classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        return self.representation(ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.representation(ids))


__all__ += ["tokenize", "Vocabulary", "PooledEmbedding", "TextClassifier"]


# ---------------------------------------------------------------------------------------------
# CIFAR-10: the ResNet of He et al. (2016, section 4.2) for 32x32 colour images.
# ---------------------------------------------------------------------------------------------
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """conv 3x3, BatchNorm, ReLU, conv 3x3, BatchNorm, plus the shortcut, then ReLU. When the
    block halves the resolution or changes the width, the shortcut is a 1x1 convolution with
    stride 2 and BatchNorm (He et al.'s option B)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@register("resnet20")
class ResNetCIFAR(nn.Module):
    """ResNet-(6n+2) for 32x32 colour images (He et al. 2016, section 4.2): conv 3x3 (`width`
    channels), three stages of `n` basic blocks at `width`, 2x`width` and 4x`width` channels (the
    2nd and 3rd start with stride 2), global average pooling, fully connected `num_classes`.

    depth 20 (n = 3), width 16: about 0.27 M parameters (ResNet-20); depth 8 is the quick toy.
    Input: (N, 3, 32, 32) floats in [0, 1]; the model normalizes with fixed CIFAR-10 channel means
    and standard deviations itself, so attacks work in pixel space and epsilon is in pixels / 255.
    Output: logits.
    """

    def __init__(self, num_classes: int = 10, depth: int = 20, width: int = 16,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"A CIFAR ResNet has depth 6n+2 (8, 14, 20, 32, 44, 56, 110); got {depth}.")
        n = (depth - 2) // 6
        self.depth, self.width, self.num_classes = depth, width, num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, planes = [], width
        for stage, out in enumerate((width, 2 * width, 4 * width)):
            for block in range(n):
                layers.append(BasicBlock(planes, out, stride=2 if stage > 0 and block == 0 else 1))
                planes = out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"ResNetCIFAR expects a batch shaped (N, 3, 32, 32) of floats in [0, 1]; got {tuple(x.shape)}. "
                "labkit.train.to_tensors moves channels-last images to channels-first and scales uint8."
            )
        x = (x - self.mean) / self.std
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


__all__ += ["BasicBlock", "ResNetCIFAR", "CIFAR10_MEAN", "CIFAR10_STD"]
