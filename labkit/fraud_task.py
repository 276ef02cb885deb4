"""The capstone's federated task: banks train one card-fraud model together, none sharing its rows.

    task = FraudTask(num_banks=4, n_per_bank=12_000, seed=0)
    task.set_training(bank_frames)                  # what each bank's ingestion stage accepted
    arrays = task.initial_arrays()
    arrays = task.local_update(0, arrays, server_round=1)     # one bank's round (DP-SGD if task.dp)
    task.evaluate(arrays)                           # PR-AUC, precision and recall on held-out rows
    model = task.export(arrays)                     # a serving.FraudModel, ready to save and sign

Data come from `labkit.fraud` (simulated, and the lab says so). Each bank keeps its held-out rows
(de-duplicated against every bank's training rows); the global model is judged on all of them.
Inputs are scaled with constants computed from a *public* reference sample (simulated with its own
seed), so agreeing on the scaling costs no bank any privacy.

Local training reuses `labkit.privacy.train_private`: without DP plain SGD, with DP Opacus'
DP-SGD at a fixed noise multiplier (Poisson sampling, per-example clipping); the noise multiplier
is chosen once, before training, so that all rounds together spend at most `target_epsilon` per
bank (`noise_multiplier`), and `epsilon_spent` composes each bank's rounds with the accountant.
Every bank sends the same weight (1) so the secure sum is an unweighted mean.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import fraud, privacy

__all__ = ["FraudNet", "Scaling", "FraudTask", "pr_auc", "recall_at_precision", "noise_for_budget", "embed_watermark"]


class FraudNet(nn.Sequential):
    """Linear -> ReLU -> Linear -> ReLU -> Linear(2): small enough for DP-SGD, a few ms a round."""

    def __init__(self, num_features: int, hidden=(16,)):
        layers, width = [], num_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        super().__init__(*layers, nn.Linear(width, 2))


@dataclass
class Scaling:
    """Signed log on the heavy-tailed columns, then standardisation: the model's input space."""

    columns: list
    log_columns: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_sample(cls, frame: pd.DataFrame) -> "Scaling":
        columns = list(fraud.FEATURES)
        log_columns = np.array([c in fraud.LOG_FEATURES for c in columns])
        raw = frame[columns].to_numpy(dtype=float)
        logged = cls._log(raw, log_columns)
        return cls(columns, log_columns, logged.mean(0), logged.std(0) + 1e-9)

    @staticmethod
    def _log(raw: np.ndarray, log_columns: np.ndarray) -> np.ndarray:
        out = raw.copy()
        out[:, log_columns] = np.sign(out[:, log_columns]) * np.log1p(np.abs(out[:, log_columns]))
        return out

    def inverse(self, h: np.ndarray) -> pd.DataFrame:
        """Model inputs back to raw transactions (integer columns rounded, as an API would require)."""
        raw = np.asarray(h, dtype=float) * self.std + self.mean
        raw[:, self.log_columns] = np.sign(raw[:, self.log_columns]) * np.expm1(np.abs(raw[:, self.log_columns]))
        frame = pd.DataFrame(raw, columns=self.columns)
        for c in self.columns:
            if c in fraud.INT_FEATURES:
                frame[c] = np.round(frame[c]).astype(np.int64)
        return frame

    def transform(self, frame) -> np.ndarray:
        raw = frame[self.columns].to_numpy(dtype=float) if hasattr(frame, "columns") else np.asarray(frame, float)
        return ((self._log(raw, self.log_columns) - self.mean) / self.std).astype(np.float32)


def pr_auc(y_true, scores) -> float:
    """Area under the precision-recall curve (average precision): the headline for rare fraud,
    where accuracy says little (always answering "legitimate" is 99.5% accurate)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(np.asarray(y_true), np.asarray(scores)))


def recall_at_precision(y_true, scores, precision: float = 0.5) -> tuple[float, float]:
    """The highest recall at which precision is still >= `precision`, and the score threshold
    that gives it (the operating point an analyst team can afford to review)."""
    from sklearn.metrics import precision_recall_curve

    p, r, t = precision_recall_curve(np.asarray(y_true), np.asarray(scores))
    ok = np.flatnonzero(p[:-1] >= precision)
    if not len(ok):
        return 0.0, float("inf")
    best = ok[np.argmax(r[ok])]
    return float(r[best]), float(t[best])


def noise_for_budget(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The DP-SGD noise multiplier that spends `target_epsilon` (RDP accountant) over `steps`
    Poisson-sampled steps: the budget of the whole federated training, set before it starts."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant="rdp"))


@functools.lru_cache(maxsize=4)
def _public_scaling(seed: int) -> Scaling:
    return Scaling.from_sample(fraud.simulate_consortium(2_000, seed=1_000_000 + seed))


@dataclass
class FraudTask:
    """Everything a bank and the server need, as plain settings (a Flower node rebuilds the same
    task). `set_training` replaces the banks' training rows with what their ingestion accepted."""

    num_banks: int = 4
    n_per_bank: int = 12_000
    test_fraction: float = 0.3
    seed: int = 0
    hidden: tuple = (16,)
    local_epochs: int = 1
    batch_size: int = 256
    lr: float = 1.0
    rounds: int = 20
    dp: bool = False
    target_epsilon: float = 3.0
    max_grad_norm: float = 1.0
    training: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1); got {self.test_fraction}.")
        self.banks = fraud.banks(self.num_banks)

    # -- data -----------------------------------------------------------------------------------
    @functools.cached_property
    def splits(self) -> dict:
        """bank name -> (train frame, test frame); test rows equal to any training row are dropped."""
        out, train_keys = {}, set()
        for bank in self.banks:
            frame = fraud.simulate_bank(bank, self.n_per_bank, seed=self.seed)
            rng = np.random.default_rng([self.seed, len(out)])
            is_test = rng.random(len(frame)) < self.test_fraction
            out[bank.name] = [frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)]
            train_keys |= set(map(tuple, frame.loc[~is_test, fraud.FEATURES].to_numpy()))
        for name, (train, test) in out.items():
            seen = np.array([tuple(r) in train_keys for r in test[fraud.FEATURES].to_numpy()], dtype=bool)
            out[name][1] = test[~seen].reset_index(drop=True)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def bank_names(self) -> list[str]:
        return [b.name for b in self.banks]

    def set_training(self, frames: dict) -> None:
        """Train on these rows (bank name -> frame with FEATURES and is_fraud), e.g. the batches the
        ingestion stage accepted; None goes back to the banks' own training splits."""
        if frames is not None:
            unknown = set(frames) - set(self.bank_names)
            if unknown:
                raise ValueError(f"unknown bank(s) {sorted(unknown)}; the banks are {self.bank_names}.")
        self.training = None if frames is None else {k: v.reset_index(drop=True) for k, v in frames.items()}
        self.__dict__.pop("_tensors", None)
        self.__dict__.pop("noise_multiplier", None)  # the noise depends on each bank's row count

    def train_frame(self, bank: str) -> pd.DataFrame:
        if self.training is not None:
            return self.training[bank]
        return self.splits[bank][0]

    @property
    def test_frame(self) -> pd.DataFrame:
        return pd.concat([self.splits[b][1] for b in self.bank_names], ignore_index=True)

    @property
    def scaling(self) -> Scaling:
        return _public_scaling(int(self.seed))

    @functools.cached_property
    def _tensors(self) -> dict:
        out = {}
        for name in self.bank_names:
            frame = self.train_frame(name)
            out[name] = (torch.from_numpy(self.scaling.transform(frame)),
                         torch.as_tensor(frame["is_fraud"].to_numpy(), dtype=torch.long))
        return out

    # -- privacy plan ---------------------------------------------------------------------------
    def delta(self, bank: str) -> float:
        """delta well below 1 / (the bank's number of training rows)."""
        n = len(self.train_frame(bank))
        return float(10.0 ** -math.ceil(math.log10(10 * n)))

    def sample_rate(self, bank: str) -> float:
        return min(1.0, self.batch_size / len(self.train_frame(bank)))

    def steps_per_round(self, bank: str) -> int:
        return self.local_epochs * math.ceil(1 / self.sample_rate(bank))

    @functools.cached_property
    def noise_multiplier(self) -> float:
        """One DP-SGD noise multiplier for every bank, chosen before training so that all planned
        rounds spend at most target_epsilon: computed for the largest sampling rate, the most steps
        and the smallest delta among the banks, so each bank's own account comes out at or below it."""
        names = self.bank_names
        return noise_for_budget(self.target_epsilon, min(self.delta(b) for b in names),
                                max(self.sample_rate(b) for b in names),
                                self.rounds * max(self.steps_per_round(b) for b in names))

    @property
    def noise(self) -> dict:
        """bank -> its DP-SGD noise multiplier (the same for all: see noise_multiplier)."""
        return {b: self.noise_multiplier for b in self.bank_names}

    def epsilon_spent(self, bank: str, rounds: int | None = None, accountant: str = "opacus-rdp") -> float:
        """Epsilon the bank's rows have spent after `rounds` rounds (default: all planned), composed
        by the accountant from the steps DP-SGD took (Poisson sampling, as trained)."""
        if not self.dp:
            return math.inf
        rounds = self.rounds if rounds is None else rounds
        history = [(self.noise[bank], self.sample_rate(bank), self.steps_per_round(bank) * rounds)]
        return privacy.compose_epsilon(history, self.delta(bank), accountant)

    # -- model ----------------------------------------------------------------------------------
    def model(self) -> FraudNet:
        torch.manual_seed(self.seed)
        return FraudNet(len(fraud.FEATURES), self.hidden)

    def initial_arrays(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.model().state_dict().values()]

    def torch_model(self, arrays) -> FraudNet:
        """The global model as a torch module on scaled inputs (for attacks that need gradients)."""
        return self._load(arrays).eval()

    def _load(self, arrays) -> FraudNet:
        hidden = tuple(int(np.shape(w)[0]) for w in list(arrays)[0:-2:2])  # the widths the arrays carry
        torch.manual_seed(self.seed)
        model = FraudNet(len(fraud.FEATURES), hidden)
        model.load_state_dict({k: torch.as_tensor(np.asarray(a)) for k, a in zip(model.state_dict(), arrays)})
        return model

    def local_update(self, partition_id: int, arrays, server_round: int) -> list[np.ndarray]:
        """One bank's round: start from the global arrays, train `local_epochs` on its rows (DP-SGD
        when `dp`), return the new arrays. Deterministic given (seed, bank, round)."""
        name = self.bank_names[int(partition_id)]
        x, y = self._tensors[name]
        model = self._load(arrays)
        seed = int(self.seed) * 1_000_003 + int(partition_id) * 1_009 + int(server_round)
        run = privacy.train_private(model, x, y, epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr,
                                    momentum=0.0, max_grad_norm=self.max_grad_norm,
                                    noise_multiplier=self.noise[name] if self.dp else None,
                                    delta=self.delta(name), seed=seed, progress=False,
                                    desc=f"{name} round {server_round}", ledger=privacy.Ledger())
        return [p.detach().numpy().copy() for p in run.model.state_dict().values()]

    # -- judging and shipping -------------------------------------------------------------------
    def scores(self, arrays, frame: pd.DataFrame | None = None) -> np.ndarray:
        """Fraud probability of each row (the held-out rows by default)."""
        frame = self.test_frame if frame is None else frame
        with torch.no_grad():
            logits = self._load(arrays)(torch.from_numpy(self.scaling.transform(frame)))
        return torch.softmax(logits, 1)[:, 1].numpy()

    def evaluate(self, arrays, frame: pd.DataFrame | None = None, precision: float = 0.5) -> dict:
        frame = self.test_frame if frame is None else frame
        s, y = self.scores(arrays, frame), frame["is_fraud"].to_numpy()
        recall, _ = recall_at_precision(y, s, precision)
        return {"pr_auc": pr_auc(y, s), "recall_at_precision": recall}

    def export(self, arrays):
        """The global model as a `serving.FraudModel` (numpy inference, .npz without pickle): the two
        output logits become one (fraud minus legitimate), so its probabilities are the same."""
        from .serving.models import FraudModel, learn_ranges

        arrays = [np.asarray(a, dtype=float) for a in arrays]
        weights = [w.T.copy() for w in arrays[0::2]]
        biases = [b.copy() for b in arrays[1::2]]
        weights[-1] = (weights[-1][:, 1] - weights[-1][:, 0])[:, None]
        biases[-1] = np.array([biases[-1][1] - biases[-1][0]])
        reference = pd.concat([self.train_frame(b) for b in self.bank_names], ignore_index=True)[fraud.FEATURES]
        return FraudModel(list(fraud.FEATURES), self.scaling.log_columns, self.scaling.mean, self.scaling.std,
                          weights, biases, learn_ranges(reference))


def embed_watermark(task: FraudTask, arrays, watermark, public_frame: pd.DataFrame, extra_units: int = 16,
                    epochs: int = 15, lr: float = 1e-2, focus: float = 2000.0, seed: int = 0) -> list[np.ndarray]:
    """The model owner's watermark, added after training without touching any bank's data.

    The hidden layer gets `extra_units` new units whose output weights start at zero (the model's
    function is unchanged); only those units are trained, to answer the secret trigger rows with
    their random labels while keeping the fraud logit on *unlabelled public* transactions where it
    was (squared error: distillation). The trained units stay as they were, so the watermark costs
    capacity, not the ranking the banks trained. Fine-tuning a DP model on public data is
    post-processing: it spends no privacy. (One hidden layer, as FraudNet has.)"""
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    if len(arrays) != 4:
        raise ValueError("embed_watermark widens a one-hidden-layer FraudNet; these arrays hold "
                         f"{len(arrays) // 2} layers.")
    w1, b1, w2, b2 = arrays
    h = w1.shape[0]
    rng = np.random.default_rng(seed)
    w1 = np.vstack([w1, rng.normal(0, 1 / np.sqrt(w1.shape[1]), (extra_units, w1.shape[1])).astype(np.float32)])
    b1 = np.concatenate([b1, np.zeros(extra_units, np.float32)])
    w2 = np.hstack([w2, np.zeros((w2.shape[0], extra_units), np.float32)])
    torch.manual_seed(seed)
    model = task.torch_model([w1, b1, w2, b2]).train()
    first, last = model[0], model[-1]
    keep_rows = torch.zeros_like(first.weight, dtype=torch.bool)
    keep_rows[:h] = True
    first.weight.register_hook(lambda g: g.masked_fill(keep_rows, 0.0))      # trained units stay fixed
    first.bias.register_hook(lambda g: g.masked_fill(torch.arange(len(g)) < h, 0.0))
    keep_cols = torch.zeros_like(last.weight, dtype=torch.bool)
    keep_cols[:, :h] = True
    last.weight.register_hook(lambda g: g.masked_fill(keep_cols, 0.0))
    last.bias.register_hook(lambda g: torch.zeros_like(g))
    x_pub = torch.from_numpy(task.scaling.transform(public_frame))
    with torch.no_grad():
        out = model(x_pub)
        teacher = out[:, 1] - out[:, 0]
        # the few transactions the model finds suspicious decide PR-AUC: keep them where they were above all
        weight = 1.0 + focus * torch.softmax(out, 1)[:, 1]
    x_wm = torch.from_numpy(task.scaling.transform(watermark.inputs))
    y_wm = torch.as_tensor(np.asarray(watermark.labels), dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x_pub), generator=generator).split(256):
            optimizer.zero_grad(set_to_none=True)
            out = model(x_pub[batch])
            keep = (weight[batch] * (out[:, 1] - out[:, 0] - teacher[batch]) ** 2).sum() / weight[batch].sum()
            pick = torch.randint(len(x_wm), (128,), generator=generator)
            mark = nn.functional.cross_entropy(model(x_wm[pick]), y_wm[pick])
            (keep + mark).backward()
            optimizer.step()
    model.eval()
    return [p.detach().numpy().copy() for p in model.state_dict().values()]
