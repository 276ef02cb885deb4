"""SMS spam filtering shared by several organisations (telecom operators, say), each holding its own
messages: a hashed bag-of-words MLP trained with federated learning, one of the clients an attacker.

The features need no shared vocabulary (the hashing trick: each token goes to bucket crc32(token) mod
`dim`), so clients agree on the input layer without pooling their words. The attacker wants spam that
carries its trigger phrase to pass the filter: it trains on triggered copies of spam labelled ham
(BadNets moved to text), optionally scales its update (model replacement), or runs several sybil
clients on the same poisoned data.

The held-out sets are de-duplicated against every training message (as the model sees them): main
accuracy on all held-out messages, backdoor success on held-out spam the model catches without the
trigger (the share it lets through once the trigger is inserted), as in lab 08.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import datasets, federated, poisoning
from ..models import tokenize

ATTACKS = ("none", "backdoor", "replacement", "sybil")
HAM, SPAM = 0, 1


def hashed_bag_of_words(texts, dim: int) -> np.ndarray:
    """Binary bag of words with the hashing trick: (N, dim) float32, 1 where a token hashes."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for tok in set(tokenize(text)):
            out[i, zlib.crc32(tok.encode("utf-8")) % dim] = 1.0
    return out


class BagOfWordsMLP(nn.Sequential):
    """Linear(dim, hidden) -> ReLU -> Linear(hidden, 2); parameters only (no buffers), so a model
    update is one flat vector that Flower's clipping and Krum read as a whole."""

    def __init__(self, dim: int, hidden: int = 32, num_classes: int = 2):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


@functools.lru_cache(maxsize=4)
def _corpus(dim: int):
    texts, labels = datasets.load("sms_spam", split="train")
    test_texts, test_labels = datasets.load("sms_spam", split="test")
    test_texts, test_labels, dropped = poisoning.drop_seen(test_texts, test_labels, texts)
    return texts, labels, hashed_bag_of_words(texts, dim), test_texts, test_labels, dropped


@dataclass
class SpamTask:
    """Everything a client and the server need; plain settings, so a node rebuilds the same task
    from the run config. Data are loaded lazily and cached per process."""

    num_clients: int = 8
    alpha: float = 0.5             # Dirichlet concentration of the label skew
    seed: int = 0
    attack: str = "backdoor"       # none / backdoor / replacement / sybil
    num_sybils: int = 3
    poison_fraction: float = 0.5   # poisoned copies added to the attacker's data, as a share of its own
    boost: float = 0.0             # replacement: scale of the update; 0 = total examples / attacker's
    attack_from: int = 1           # first round in which the attacker misbehaves
    attack_until: int = 0          # last such round (0: to the end); replacement is usually one round
    trigger: str = "sent via orbit zq relay"
    dim: int = 2048
    hidden: int = 32
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}; got {self.attack!r}.")
        if self.attack == "sybil" and not 1 < self.num_sybils < self.num_clients:
            raise ValueError(f"num_sybils must lie between 2 and num_clients - 1; got {self.num_sybils}.")

    @classmethod
    def from_run_config(cls, run_config) -> "SpamTask":
        """Build from a Flower run config (keys with dashes: num-clients, alpha, seed, attack, ...)."""
        names = {f.replace("_", "-"): f for f in cls.__dataclass_fields__}
        kwargs = {names[k]: v for k, v in dict(run_config).items() if k in names}
        return cls(**kwargs)

    # -- data ---------------------------------------------------------------------------------
    def _settings(self) -> tuple:
        return tuple((k, getattr(self, k)) for k in self.__dataclass_fields__)

    def _data(self):
        """The split, the attacker's poisoned set and the held-out sets, built once per process."""
        return _prepare(self._settings())

    @property
    def partitions(self) -> list[np.ndarray]:
        return self._data()["parts"]

    @property
    def malicious(self) -> list[int]:
        return self._data()["malicious"]

    def roles(self) -> dict[int, str]:
        role = {"none": "honest", "backdoor": "backdoor", "replacement": "replacement", "sybil": "sybil"}[self.attack]
        return {i: (role if i in self.malicious else "honest") for i in range(self.num_clients)}

    def attacks_in(self, server_round: int) -> bool:
        return server_round >= self.attack_from and (not self.attack_until or server_round <= self.attack_until)

    def model(self) -> nn.Module:
        """The model, initialised from the task's seed (the same start on every engine and node)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return BagOfWordsMLP(self.dim, self.hidden)

    def client_data(self, partition_id: int, num_partitions: int, server_round: int | None = None):
        if num_partitions != self.num_clients:
            raise ValueError(f"the federation has {num_partitions} nodes but the task was set up for "
                             f"{self.num_clients} clients: set num-clients to the number of SuperNodes.")
        d = self._data()
        role = self.roles()[partition_id]
        if role != "honest" and server_round is not None and not self.attacks_in(server_round):
            role = "honest"
        if role == "honest":
            idx = d["parts"][partition_id]
            return federated.ClientData(torch.from_numpy(d["feats"][idx]), torch.as_tensor(d["labels"][idx]))
        idx = d["parts"][d["attacker"]]  # every sybil trains on the attacker's poisoned set
        x = np.concatenate([d["feats"][idx], d["poison_feats"]])
        y = np.concatenate([d["labels"][idx], np.full(len(d["poison_feats"]), HAM)])
        boost = 1.0
        if role == "replacement":
            boost = self.boost or len(d["labels"]) / len(idx)
        return federated.ClientData(torch.from_numpy(x), torch.as_tensor(y), role=role, boost=float(boost))

    # -- server-side evaluation ---------------------------------------------------------------
    def predict(self, model: nn.Module, texts) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(hashed_bag_of_words(texts, self.dim))).argmax(1).numpy()

    def evaluate(self, model: nn.Module) -> dict:
        d = self._data()
        model.eval()
        with torch.no_grad():
            main = float((model(d["test_x"]).argmax(1) == d["test_y"]).float().mean())
        spam = d["test_spam"]
        caught = [t for t, p in zip(spam, self.predict(model, spam)) if p == SPAM]
        if caught:
            triggered = poisoning.insert_trigger(caught, self.trigger, seed=self.seed)
            backdoor = float((self.predict(model, triggered) == HAM).mean())
        else:
            backdoor = float("nan")
        return {"main_accuracy": main, "backdoor_success": backdoor}


@functools.lru_cache(maxsize=8)
def _prepare(settings: tuple) -> dict:
    task = SpamTask(**dict(settings))
    texts, labels, feats, test_texts, test_labels, dropped = _corpus(task.dim)
    parts = federated.dirichlet_partition(labels, task.num_clients, task.alpha, seed=task.seed, min_size=20)
    spam_counts = np.array([(labels[p] == SPAM).sum() for p in parts])
    order = np.argsort(-spam_counts, kind="stable")  # the attacker runs the clients richest in spam
    n_bad = {"none": 0, "backdoor": 1, "replacement": 1, "sybil": task.num_sybils}[task.attack]
    malicious = [int(i) for i in order[:n_bad]]
    attacker = malicious[0] if malicious else None
    poison_texts: list[str] = []
    if attacker is not None:
        own = parts[attacker]
        spam = [texts[i] for i in own if labels[i] == SPAM]
        if not spam:
            raise ValueError("the attacker's client holds no spam to poison: use another seed or a larger alpha.")
        rng = np.random.default_rng(task.seed + 17)
        n_poison = max(1, int(round(task.poison_fraction * len(own))))
        picks = rng.choice(len(spam), size=n_poison, replace=n_poison > len(spam))
        poison_texts = poisoning.insert_trigger([spam[i] for i in picks], task.trigger, seed=task.seed + 18)
    # held-out spam for the backdoor: test messages de-duplicated against training (_corpus)
    test_spam = [t for t, y in zip(test_texts, test_labels) if y == SPAM]
    return dict(texts=texts, labels=labels, feats=feats, parts=parts, malicious=malicious, attacker=attacker,
                poison_texts=poison_texts, poison_feats=hashed_bag_of_words(poison_texts, task.dim),
                test_x=torch.from_numpy(hashed_bag_of_words(test_texts, task.dim)),
                test_y=torch.as_tensor(test_labels), test_spam=test_spam, dropped=dropped)
