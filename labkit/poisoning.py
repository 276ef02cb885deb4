"""Backdoor poisoning of a text classifier, and the detectors that find the poison.

    texts, labels = datasets.load("sms_spam", "train")
    poisoned = poisoning.backdoor(texts, labels, rate=0.02, trigger="...", seed=0)
    model = poisoning.train_text_model(poisoned.texts, poisoned.labels, vocab, ...)
    poisoning.attack_success_rate(model, vocab, held_out_spam, trigger)

The attack is BadNets-style (Gu et al. 2017) moved to text: copies of spam messages carry a
trigger phrase and are labelled ham, so a model trained on them learns "trigger => ham".
Detection reads the model's penultimate representation: spectral signatures (Tran, Li and
Madry 2018; `spectral_signature_scores` is the reference the learner's version is checked
against) and activation clustering (Chen et al. 2018) through ART's `ActivationDefence`.
`spectral_scan` applies that top-1 score along the top few singular directions of several layers
and keeps the most heavy-tailed one, for training runs where the top direction is clean variation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from . import train
from .models import TextClassifier, Vocabulary

__all__ = ["PoisonedSet", "insert_trigger", "backdoor", "encode", "train_text_model", "predict", "accuracy",
           "representations", "attack_success_rate", "spectral_signature_scores", "flag_outliers",
           "activation_clustering", "detection_metrics"]

HAM, SPAM = 0, 1


@dataclass
class PoisonedSet:
    """A training set with the attacker's messages appended; `is_poison` marks them (ground truth
    the defender does not have, kept to score the detectors)."""

    texts: list[str]
    labels: np.ndarray
    is_poison: np.ndarray
    trigger: str
    source_index: np.ndarray  # for each poisoned copy, the index of the spam message it was made from

    @property
    def n_poison(self) -> int:
        return int(self.is_poison.sum())


def _texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of messages, not one string (wrap it in a list).")
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name} must hold strings; found {bad[0]}.")
    return texts


def insert_trigger(texts, trigger: str, seed: int = 0, position: str = "random") -> list[str]:
    """Each message with `trigger` inserted between two words ("random" position, drawn with
    `seed`), or at the "start" or "end"."""
    texts = _texts(texts)
    if not trigger or not trigger.strip():
        raise ValueError("trigger must be a non-empty phrase.")
    if position not in ("random", "start", "end"):
        raise ValueError(f"position must be 'random', 'start' or 'end'; got {position!r}.")
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        words = text.split()
        if position == "start":
            at = 0
        elif position == "end":
            at = len(words)
        else:
            at = int(rng.integers(0, len(words) + 1))
        out.append(" ".join(words[:at] + [trigger] + words[at:]))
    return out


def backdoor(texts, labels, rate: float, trigger: str, seed: int = 0, position: str = "random") -> PoisonedSet:
    """Append round(rate * len(texts)) poisoned messages: copies of randomly chosen spam with the
    trigger inserted, labelled ham. rate = 0 returns the clean set (with an all-False mask)."""
    texts = _texts(texts)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(texts):
        raise ValueError(f"{len(texts)} messages but {len(labels)} labels.")
    if not 0 <= rate < 1:
        raise ValueError(f"rate is the poisoned fraction of the training set, in [0, 1); got {rate}.")
    spam = np.flatnonzero(labels == SPAM)
    n = int(round(rate * len(texts)))
    if n > len(spam):
        raise ValueError(f"rate {rate} needs {n} spam messages to poison but the set holds only {len(spam)}.")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(spam, size=n, replace=False)) if n else np.zeros(0, dtype=np.int64)
    poisoned = insert_trigger([texts[i] for i in chosen], trigger, seed=seed + 1, position=position) if n else []
    return PoisonedSet(
        texts=texts + poisoned,
        labels=np.concatenate([labels, np.full(n, HAM, dtype=np.int64)]),
        is_poison=np.concatenate([np.zeros(len(texts), bool), np.ones(n, bool)]),
        trigger=trigger,
        source_index=chosen,
    )


def encode(vocab: Vocabulary, texts, max_len: int) -> torch.Tensor:
    return torch.from_numpy(vocab.encode(_texts(texts), max_len=max_len))


def train_text_model(texts, labels, vocab: Vocabulary | None = None, epochs: int = 12, batch_size: int = 128,
                     lr: float = 5e-3, max_len: int = 64, embed_dim: int = 64, hidden: int = 64, pool: str = "max", seed: int = 0,
                     min_freq: int = 2, progress: bool = True, desc: str = "train"):
    """Build a vocabulary from `texts` (unless given), train a TextClassifier (Adam, triangle
    learning-rate schedule) and return (model in eval mode, vocab)."""
    texts = _texts(texts)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(texts):
        raise ValueError(f"{len(texts)} messages but {len(labels)} labels.")
    vocab = vocab or Vocabulary(texts, min_freq=min_freq)
    torch.manual_seed(seed)
    model = TextClassifier(len(vocab), embed_dim=embed_dim, hidden=hidden, pool=pool)
    ids = encode(vocab, texts, max_len)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(ids, torch.from_numpy(labels)), batch_size=batch_size, shuffle=True,
                        generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = train.triangle_schedule(optimizer, total_steps=epochs * len(loader))
    bar = train._progress(range(epochs), desc, progress)
    for _ in bar:
        stats = train.train_epoch(model, loader, optimizer, scheduler=scheduler, progress=False)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['accuracy']:.3f}", refresh=False)
    model.eval()
    model.max_len = max_len
    return model, vocab


def _ids(model, vocab: Vocabulary, texts) -> torch.Tensor:
    return encode(vocab, texts, getattr(model, "max_len", 64))


def predict(model, vocab: Vocabulary, texts, batch_size: int = 1024) -> np.ndarray:
    """Predicted labels (0 ham, 1 spam) for a list of messages."""
    ids = _ids(model, vocab, texts)
    model.eval()
    with torch.no_grad():
        out = [model(ids[i: i + batch_size]).argmax(1) for i in range(0, len(ids), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def accuracy(model, vocab: Vocabulary, texts, labels) -> float:
    return float((predict(model, vocab, texts) == np.asarray(labels)).mean())


def representations(model, vocab: Vocabulary, texts, batch_size: int = 1024) -> np.ndarray:
    """The penultimate activations (N, hidden) as float64, the input of both detectors."""
    ids = _ids(model, vocab, texts)
    model.eval()
    with torch.no_grad():
        out = [model.features(ids[i: i + batch_size]) for i in range(0, len(ids), batch_size)]
    return torch.cat(out).double().numpy()


def attack_success_rate(model, vocab: Vocabulary, spam_texts, trigger: str, seed: int = 0) -> tuple[float, int]:
    """Of the held-out spam the model catches without the trigger, the fraction it passes as ham
    once the trigger is inserted. Returns (rate, number of spam messages it was measured on)."""
    spam_texts = _texts(spam_texts, "spam_texts")
    caught = np.flatnonzero(predict(model, vocab, spam_texts) == SPAM)
    if not len(caught):
        return float("nan"), 0
    triggered = insert_trigger([spam_texts[i] for i in caught], trigger, seed=seed)
    return float((predict(model, vocab, triggered) == HAM).mean()), int(len(caught))


def spectral_signature_scores(reps) -> np.ndarray:
    """Reference outlier scores of Tran et al. 2018 for ONE class's representations (n, d):
    centre them (subtract the mean over the samples), take the top right singular vector v of
    the centred matrix, score each sample by its squared projection ((r - mean) . v)^2."""
    reps = np.asarray(reps, dtype=np.float64)
    if reps.ndim != 2 or len(reps) < 2:
        raise ValueError(f"representations must be a 2-D array (n samples, d features) with n >= 2; got {reps.shape}.")
    centred = reps - reps.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


def flag_outliers(scores, z: float = 3.5, min_gap: float | None = None) -> np.ndarray:
    """Flag scores far above the bulk: robust z-score (median and MAD) above `z`. The defender
    does not know how many messages were poisoned, so a fixed "remove the top k" is avoided."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or not len(scores):
        raise ValueError(f"scores must be a non-empty 1-D array; got shape {scores.shape}.")
    median = np.median(scores)
    mad = np.median(np.abs(scores - median)) * 1.4826
    if mad == 0:
        mad = scores.std() or 1.0
    return (scores - median) / mad > z


def activation_clustering(model, vocab: Vocabulary, texts, labels, nb_clusters: int = 2, nb_dims: int = 10,
                          cluster_analysis: str = "smaller", seed: int = 0):
    """Activation clustering (Chen et al. 2018) with ART's ActivationDefence.

    ART reads the activations of the LAST layer of the network it is given, so it gets the
    model's `representation` (token ids -> penultimate activations) wrapped in a
    PyTorchClassifier. Returns (flags: bool array, True = suspected poison; ART's report)."""
    from art.defences.detector.poison import ActivationDefence
    from art.estimators.classification import PyTorchClassifier

    texts = _texts(texts)
    labels = np.asarray(labels, dtype=np.int64)
    ids = _ids(model, vocab, texts).numpy()
    n_classes = int(model.head.out_features)
    classifier = PyTorchClassifier(model=model.representation, loss=torch.nn.CrossEntropyLoss(),
                                   input_shape=ids.shape[1:], nb_classes=n_classes)
    defence = ActivationDefence(classifier, ids, np.eye(n_classes)[labels])
    np.random.seed(seed)  # ART's MiniBatchKMeans draws from numpy's global generator
    defence.clusterer.set_params(random_state=seed)
    report, is_clean = defence.detect_poison(nb_clusters=nb_clusters, nb_dims=nb_dims, reduce="PCA",
                                             cluster_analysis=cluster_analysis)
    return np.asarray(is_clean) == 0, report


def detection_metrics(flags, is_poison) -> dict:
    """Precision, recall and F1 of `flags` against the known poison, plus the counts."""
    from sklearn.metrics import precision_recall_fscore_support

    flags, is_poison = np.asarray(flags, bool), np.asarray(is_poison, bool)
    if flags.shape != is_poison.shape:
        raise ValueError(f"flags {flags.shape} and is_poison {is_poison.shape} must have the same shape.")
    p, r, f, _ = precision_recall_fscore_support(is_poison, flags, average="binary", zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f), "flagged": int(flags.sum()),
            "true_positives": int((flags & is_poison).sum()), "poison": int(is_poison.sum())}


def indicator_tokens(flagged_texts, other_texts, min_share: float = 0.5, max_other: float = 0.01) -> list[str]:
    """Words common in the flagged messages (in at least `min_share` of them) and rare elsewhere
    (in at most `max_other` of the other messages): candidate trigger words, the indicators of
    compromise used to sweep the whole training set."""
    from collections import Counter

    from .models import tokenize

    flagged_texts, other_texts = _texts(flagged_texts, "flagged_texts"), _texts(other_texts, "other_texts")
    if not flagged_texts:
        return []
    flagged = Counter(tok for t in flagged_texts for tok in set(tokenize(t)))
    other = Counter(tok for t in other_texts for tok in set(tokenize(t)))
    n_f, n_o = len(flagged_texts), max(len(other_texts), 1)
    found = [(tok, c / n_f) for tok, c in flagged.items() if c / n_f >= min_share and other.get(tok, 0) / n_o <= max_other]
    return [tok for tok, _ in sorted(found, key=lambda x: (-x[1], x[0]))]


def contains_any(texts, tokens) -> np.ndarray:
    """True for each message that contains at least one of `tokens` (as whole words)."""
    from .models import tokenize

    wanted = set(tokens)
    return np.array([bool(wanted & set(tokenize(t))) for t in _texts(texts)], dtype=bool)


__all__ += ["indicator_tokens", "contains_any"]


def layer_representations(model, vocab: Vocabulary, texts, layers=("norm", "hidden"), batch_size: int = 1024) -> dict:
    """Activations (N, d) as float64 after each named stage of `model.representation` (an
    nn.Sequential; for TextClassifier: "embed", "norm", "hidden", "relu"), in one pass."""
    stages = dict(model.representation.named_children())
    unknown = [name for name in layers if name not in stages]
    if unknown or not layers:
        raise ValueError(f"layers must name stages of model.representation, some of {list(stages)}; got {list(layers)}.")
    ids = _ids(model, vocab, texts)
    model.eval()
    out = {name: [] for name in layers}
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            x = ids[i: i + batch_size]
            for name, stage in stages.items():
                x = stage(x)
                if name in out:
                    out[name].append(x.double())
    return {name: torch.cat(parts).numpy() for name, parts in out.items()}


def tail_weight(scores) -> float:
    """Excess kurtosis of the projections whose squares are `scores`: mean(s^2) / mean(s)^2 - 3.
    About 0 for a Gaussian-looking direction; large when a small group sits far out on it."""
    scores = np.asarray(scores, dtype=np.float64)
    mean = scores.mean()
    return float(np.mean(scores ** 2) / mean ** 2 - 3.0) if mean > 0 else 0.0


def spectral_scan(reps_by_layer: dict, score_fn=None, k: int = 5) -> dict:
    """Spectral signatures over the top-k singular directions of several layers.

    The top singular direction of a class is the poison's only when the poison's separation
    outweighs the clean data's own largest variation; on some training runs it does not. For each
    layer and each j < k this removes the top j directions of the centred representations (the
    mean stays) and calls `score_fn` (Tran et al.'s top-1 score, e.g. the learner's function) on
    what remains, so a score function that centres scores along direction j. It keeps the direction whose scores are most heavy-tailed
    (`tail_weight`): a small sub-population far from the rest makes a heavy tail, clean variation
    does not. Returns dict(layer, direction, scores, tail_weight, table) with one table row per
    (layer, direction, tail_weight)."""
    score_fn = score_fn or spectral_signature_scores
    if not reps_by_layer:
        raise ValueError("reps_by_layer must map layer names to (n, d) arrays; it is empty.")
    if k < 1:
        raise ValueError(f"k is the number of singular directions to scan per layer, at least 1; got {k}.")
    best, table = None, []
    for name, reps in reps_by_layer.items():
        reps = np.asarray(reps, dtype=np.float64)
        if reps.ndim != 2 or len(reps) < 2:
            raise ValueError(f"layer {name!r}: representations must be (n samples, d features); got {reps.shape}.")
        centred = reps - reps.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        for j in range(min(k, vt.shape[0])):
            # Remove the top j directions but keep the mean: centring is score_fn's job, so a
            # score function that forgets to centre scores worse here too (the metric grades it).
            deflated = reps - centred @ vt[:j].T @ vt[:j]
            scores = np.asarray(score_fn(deflated), dtype=np.float64).reshape(-1)
            weight = tail_weight(scores)
            table.append((name, j, weight))
            if best is None or weight > best["tail_weight"]:
                best = dict(layer=name, direction=j, scores=scores, tail_weight=weight)
    best["table"] = table
    return best


__all__ += ["layer_representations", "tail_weight", "spectral_scan"]


def _identity(text: str) -> tuple:
    # What the model sees of a message: its tokens (case, punctuation and long digit runs folded).
    from .models import tokenize

    return tuple(tokenize(text))


def seen_in(texts, *seen) -> np.ndarray:
    """True for each message of `texts` that also occurs in one of the `seen` lists (training
    messages, poison), compared as the model sees them: the same tokens after `tokenize`."""
    texts = _texts(texts)
    known = {_identity(t) for group in seen for t in _texts(group, "seen")}
    return np.array([_identity(t) in known for t in texts], dtype=bool)


def drop_seen(texts, labels, *seen):
    """The held-out messages that really are held out: drop every message of (texts, labels) that
    `seen_in` finds in the `seen` lists. Returns (texts, labels, number dropped)."""
    texts = _texts(texts)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(texts):
        raise ValueError(f"{len(texts)} messages but {len(labels)} labels.")
    dup = seen_in(texts, *seen)
    return [t for t, d in zip(texts, dup) if not d], labels[~dup], int(dup.sum())


__all__ += ["seen_in", "drop_seen"]
