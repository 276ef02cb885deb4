"""Model extraction, the attacker's side: query synthesis, harvesting answers over HTTP, the
surrogate, and fidelity.

    roles = split_roles(texts, labels, seed)        # the owner's training half, the attacker's text
    queries = natural_queries(roles.attacker_texts, 2000, seed)
    with QueryClient(api.url, api_key=key) as client:
        harvest = client.harvest(queries)          # batched, polite, stops when the key is suspended
    surrogate = fit_surrogate(harvest.texts, harvest.p_positive)
    fidelity(surrogate, eval_texts, target_labels)  # agreement with the target on held-out text

What the attacker owns: text, never the owner's training set. `split_roles` gives the attacker
the half of the rt_polarity training split that the target never trained on, as unlabelled
sentences (a scrape of public review snippets); its labels are never used. The held-out test
split scores fidelity and accuracy and is seen by neither side.

Surrogates are scikit-learn pipelines (TF-IDF on words and bigrams + logistic regression). With
probabilities from the API the surrogate learns from soft labels: each query appears twice, as
positive with weight p and as negative with weight 1 - p, which is exactly the cross-entropy
against the target's probabilities. With labels only, p is 0 or 1 and the same code fits hard labels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "Roles", "split_roles", "natural_queries", "synthetic_queries", "benign_streams",
    "surrogate_pipeline", "fit_surrogate", "agreement", "fidelity", "fidelity_curve", "stolen_fidelity",
    "queries_to_reach",
    "answer_to_p", "Harvest", "QueryClient", "w_trajectory", "calibrate_prada_threshold",
    "plot_fidelity_curves",
]

POSITIVE = "positive"


# ---------------------------------------------------------------------------------------------
# Who owns which text
# ---------------------------------------------------------------------------------------------

@dataclass
class Roles:
    target_texts: list       # the owner's training sentences (with labels)
    target_labels: np.ndarray
    attacker_texts: list     # sentences the attacker owns: no labels, never in the target's training set


def split_roles(texts: Sequence[str], labels, seed: int = 0, target_share: float = 0.5) -> Roles:
    """Split one labelled corpus into the owner's training data and the attacker's unlabelled text.

    The two parts are disjoint (by position, and the attacker's part drops any sentence that also
    occurs in the owner's part, since rt_polarity holds a few duplicates)."""
    texts, labels = list(texts), np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels: pass the texts and labels of one split.")
    if not 0 < target_share < 1:
        raise ValueError(f"target_share={target_share} is the owner's share of the corpus; use a value in (0, 1).")
    order = np.random.default_rng(seed).permutation(len(texts))
    cut = int(round(target_share * len(texts)))
    owner, attacker = order[:cut], order[cut:]
    owned = {texts[i] for i in owner}
    return Roles([texts[i] for i in owner], labels[owner], [texts[i] for i in attacker if texts[i] not in owned])


# ---------------------------------------------------------------------------------------------
# Query synthesis
# ---------------------------------------------------------------------------------------------

def _check_budget(n: int, what: str) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"{what} must be a positive whole number of queries, not {n!r}.")
    return int(n)


def natural_queries(pool: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """n sentences from the attacker's own text, in random order, without repeats."""
    n = _check_budget(n, "n")
    pool = list(pool)
    if n > len(pool):
        raise ValueError(f"The attacker owns {len(pool)} sentences but {n} natural queries were asked for: "
                         "lower the budget, or stretch the text with synthetic_queries.")
    return [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[:n]]


def synthetic_queries(seeds: Sequence[str], n: int, seed: int = 0, variants_per_seed: int = 10,
                      vocabulary: Sequence[str] | None = None) -> list[str]:
    """Stretch a few owned sentences into n queries (Papernot-style augmentation for text).

    Each seed sentence is sent once, followed by `variants_per_seed - 1` copies with one word
    edited: dropped, replaced by a word from `vocabulary` (default: the seeds' own words), or
    inserted. Every variant asks "how much does this one word move the score?", which is what
    makes such streams useful to an attacker and easy to spot for a per-key detector."""
    n = _check_budget(n, "n")
    seeds = [s for s in seeds if s.split()]
    if not seeds:
        raise ValueError("synthetic_queries needs at least one non-empty seed sentence.")
    if variants_per_seed < 1:
        raise ValueError("variants_per_seed counts the seed itself, so it is at least 1.")
    words = sorted(set(vocabulary) if vocabulary is not None else {w for s in seeds for w in s.split()})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(seeds))
    out: list[str] = []
    i = 0
    while len(out) < n:
        base = seeds[order[i % len(seeds)]].split()
        i += 1
        out.append(" ".join(base))
        for _ in range(variants_per_seed - 1):
            edited = list(base)
            at = int(rng.integers(len(edited)))
            op = int(rng.integers(3))
            if op == 0 and len(edited) > 1:
                del edited[at]
            elif op == 1:
                edited[at] = words[int(rng.integers(len(words)))]
            else:
                edited.insert(at, words[int(rng.integers(len(words)))])
            out.append(" ".join(edited))
    return out[:n]


def benign_streams(pool: Sequence[str], n_clients: int, queries_each: int, seed: int = 0) -> list[list[str]]:
    """What ordinary clients send: each client draws its own natural sentences from `pool`
    (independently, so two clients may send the same review, as real users do)."""
    _check_budget(queries_each, "queries_each")
    pool = list(pool)
    if queries_each > len(pool):
        raise ValueError(f"queries_each={queries_each} exceeds the {len(pool)} sentences in the pool.")
    rng = np.random.default_rng(seed)
    return [[pool[i] for i in rng.permutation(len(pool))[:queries_each]] for _ in range(n_clients)]


# ---------------------------------------------------------------------------------------------
# Surrogate and fidelity
# ---------------------------------------------------------------------------------------------

def surrogate_pipeline(C: float = 8.0):
    """The attacker's model, unfitted: TF-IDF (words and bigrams, fitted on the attacker's queries)
    + logistic regression. The attacker does not know the target's vocabulary or weights."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                         LogisticRegression(C=C, solver="liblinear"))


def _as_p(p_positive, n: int) -> np.ndarray:
    p = np.asarray(p_positive, dtype=float).reshape(-1)
    if len(p) != n:
        raise ValueError(f"{n} texts but {len(p)} answers: pass one P(positive) per query.")
    if len(p) and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("answers must be probabilities of the positive class in [0, 1] (labels as 0 / 1).")
    return p


def fit_surrogate(texts: Sequence[str], p_positive, C: float = 8.0):
    """Reference surrogate training: soft labels by weighting (each text twice: positive with
    weight p, negative with weight 1 - p). Hard labels (0 / 1) are the special case."""
    texts = list(texts)
    p = _as_p(p_positive, len(texts))
    if len(texts) < 2:
        raise ValueError("Train a surrogate on at least two answered queries.")
    model = surrogate_pipeline(C)
    y = np.r_[np.ones(len(texts)), np.zeros(len(texts))]
    weights = np.r_[p, 1 - p]
    if weights[y == 1].sum() == 0 or weights[y == 0].sum() == 0:  # every answer the same class
        weights = weights + 1e-6
    model.fit(texts + texts, y, logisticregression__sample_weight=weights)
    return model


def agreement(a, b) -> float:
    """Share of positions where two label arrays agree."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"Compare label arrays of the same, non-zero length (got {len(a)} and {len(b)}).")
    return float((a == b).mean())


def fidelity(surrogate, texts: Sequence[str], target_labels) -> float:
    """Agreement of the surrogate's labels with the target's labels on held-out text (Jagielski
    et al. 2020 call this fidelity, as opposed to accuracy against the true labels)."""
    return agreement(surrogate.predict(list(texts)), target_labels)


def fidelity_curve(texts: Sequence[str], p_positive, budgets: Sequence[int], eval_texts: Sequence[str],
                   target_labels, true_labels=None, fit: Callable = fit_surrogate) -> list[dict]:
    """Train a surrogate on the first b answered queries for each budget b; measure fidelity (and
    accuracy, when true labels are given) on the held-out texts. Budgets beyond the answered
    queries are skipped."""
    texts, p = list(texts), _as_p(p_positive, len(texts))
    rows = []
    for b in budgets:
        if b > len(texts):
            continue
        model = fit(texts[:b], p[:b])
        predicted = model.predict(list(eval_texts))
        row = {"queries": int(b), "fidelity": agreement(predicted, target_labels)}
        if true_labels is not None:
            row["accuracy"] = agreement(predicted, true_labels)
        rows.append(row)
    return rows


def stolen_fidelity(texts: Sequence[str], p_positive, eval_texts: Sequence[str], target_labels,
                    fit: Callable = fit_surrogate) -> float:
    """Fidelity of what an attacker can build from the answers it got, however few: a surrogate
    when the answers hold both classes; otherwise the best constant guess (the one class it saw,
    or the majority class when it got no answers at all)."""
    texts, p = list(texts), _as_p(p_positive, len(texts))
    target_labels = np.asarray(target_labels)
    seen = set((p > 0.5).astype(int))
    if len(texts) >= 2 and len(seen) == 2:
        return fidelity(fit(texts, p), eval_texts, target_labels)
    if len(seen) == 1:
        return float((target_labels == seen.pop()).mean())
    share = float(target_labels.mean())
    return max(share, 1 - share)


def queries_to_reach(curve: list[dict], level: float) -> int | None:
    """The smallest budget on a fidelity curve that reaches `level` (None if none does)."""
    for row in curve:
        if row["fidelity"] >= level:
            return row["queries"]
    return None


# ---------------------------------------------------------------------------------------------
# Harvesting answers over HTTP
# ---------------------------------------------------------------------------------------------

def answer_to_p(item: dict, positive: str = POSITIVE) -> float:
    """P(positive) from one API answer: the probability when the API returns probabilities
    (rounded or noisy ones included), else 1.0 / 0.0 from the label."""
    probs = item.get("probabilities")
    if probs:
        if positive not in probs:
            raise ValueError(f"The answer's probabilities have no {positive!r} class: {sorted(probs)}.")
        return float(min(1.0, max(0.0, probs[positive])))
    if "label" not in item:
        raise ValueError(f"An answer without probabilities or label: {item}.")
    return 1.0 if item["label"] == positive else 0.0


@dataclass
class Harvest:
    """What one client got back from the API."""

    texts: list = field(default_factory=list)          # the queries that were answered, in order
    p_positive: list = field(default_factory=list)     # P(positive) per answered query (0 / 1 when label-only)
    labels: list = field(default_factory=list)         # the label the API returned (1 = positive)
    probabilities_shown: bool = False                  # did the API return probabilities?
    suspended: bool = False                            # stopped by 403 key_suspended
    suspended_detail: str = ""
    requests: int = 0
    retries_429: int = 0
    waited_s: float = 0.0
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.texts)

    def __str__(self) -> str:
        shown = "probabilities" if self.probabilities_shown else "labels only"
        end = f"; suspended after {self.answered} answers" if self.suspended else ""
        return (f"{self.answered} answers ({shown}) in {self.requests} requests, {self.seconds:.1f} s"
                f"{end}{f'; {self.retries_429} rate-limit waits' if self.retries_429 else ''}")


class QueryClient:
    """An httpx client for the model API that batches politely.

    - sends `batch_size` texts per POST /predict/batch (a batch of n counts as n queries);
    - waits `pause_s` between requests;
    - on 429 it waits as long as Retry-After says (at most `max_wait_s`) and resends the same
      batch, up to `max_retries` times in a row;
    - on 403 key_suspended it stops and returns what was answered so far (Harvest.suspended);
    - on any other error it raises with the API's own explanation.
    """

    def __init__(self, base_url: str, api_key: str | None = None, batch_size: int = 32, pause_s: float = 0.0,
                 max_retries: int = 5, max_wait_s: float = 60.0, timeout: float = 30.0, transport=None,
                 key_header: str = "X-API-Key", positive: str = POSITIVE, sleep: Callable = time.sleep):
        import httpx

        if batch_size < 1:
            raise ValueError("batch_size must be at least 1.")
        headers = {key_header: api_key} if api_key else {}
        self.batch_size, self.pause_s = int(batch_size), float(pause_s)
        self.max_retries, self.max_wait_s = int(max_retries), float(max_wait_s)
        self.positive, self._sleep = positive, sleep
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> "QueryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _post(self, batch: list[str], result: Harvest):
        """One batch: the list of answers, or None when the key is suspended."""
        body = {"instances": [{"text": t} for t in batch]}
        for attempt in range(self.max_retries + 1):
            response = self.http.post("/predict/batch", json=body)
            result.requests += 1
            if response.status_code == 200:
                return response.json()["predictions"]
            try:
                error = response.json()
            except ValueError:
                error = {"error": "unknown", "detail": response.text[:200]}
            if response.status_code == 429 and attempt < self.max_retries:
                wait = min(float(response.headers.get("Retry-After", 1)), self.max_wait_s)
                result.retries_429 += 1
                result.waited_s += wait
                self._sleep(wait)
                continue
            if response.status_code == 403 and error.get("error") == "key_suspended":
                result.suspended, result.suspended_detail = True, error.get("detail", "")
                return None
            hint = {401: " (no API key: pass api_key=)", 403: " (the API does not know this key)",
                    429: f" (still rate-limited after {self.max_retries} waits: lower the pace)",
                    413: " (lower batch_size)", 422: " (lower batch_size if the API caps batches)"}
            raise RuntimeError(f"The API answered {response.status_code} {error.get('error')}: "
                               f"{error.get('detail')}{hint.get(response.status_code, '')}")
        raise AssertionError("unreachable")

    def harvest(self, texts: Sequence[str], progress: bool = True, desc: str = "queries") -> Harvest:
        """Send every text (in batches) and collect the answers, until done or suspended."""
        from tqdm.auto import tqdm

        texts = list(texts)
        result = Harvest()
        started = time.perf_counter()
        with tqdm(total=len(texts), desc=desc, disable=not progress, mininterval=0.5, leave=False) as bar:
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start:start + self.batch_size]
                answers = self._post(batch, result)
                if answers is None:
                    break
                for text, item in zip(batch, answers):
                    result.texts.append(text)
                    result.p_positive.append(answer_to_p(item, self.positive))
                    result.labels.append(1 if item["label"] == self.positive else 0)
                    result.probabilities_shown |= bool(item.get("probabilities"))
                bar.update(len(batch))
                if self.pause_s:
                    self._sleep(self.pause_s)
        result.seconds = time.perf_counter() - started
        return result


# ---------------------------------------------------------------------------------------------
# The defender's calibration of the PRADA test (offline, with the serving layer's QueryMonitor)
# ---------------------------------------------------------------------------------------------

def w_trajectory(model, texts: Sequence[str], min_queries: int = 100, window: int = 500) -> np.ndarray:
    """The Shapiro-Wilk W that a PRADA monitor computes after each query of one stream (NaN
    before `min_queries` distances exist). Runs labkit.serving's QueryMonitor with flagging off."""
    from .serving.layers import QueryMonitor

    texts = list(texts)
    monitor = QueryMonitor(extraction=True, probing=False, threshold=0.0, min_queries=min_queries, window=window)
    feats, labels = model.features(texts), model.predict_proba(texts).argmax(1)
    out = np.full(len(texts), np.nan)
    for i, (f, label) in enumerate(zip(feats, labels)):
        monitor.observe("stream", f, int(label))
        w = (monitor.statistic if hasattr(monitor, "statistic") else monitor.w_statistic)("stream")
        if w is not None:
            out[i] = w
    return out


def calibrate_prada_threshold(model, streams: Sequence[Sequence[str]], min_queries: int = 100, window: int = 500,
                              margin: float = 0.05) -> tuple[float, list[float]]:
    """A threshold below every W seen on known-benign streams: min W - margin. Returns
    (threshold, the lowest W of each stream)."""
    lows = [float(np.nanmin(w_trajectory(model, s, min_queries, window))) for s in streams]
    return min(lows) - margin, lows


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------

def plot_fidelity_curves(curves: dict, reference: float | None = None, reference_label: str = "",
                         title: str = "Fidelity against the number of queries"):
    """curves: {label: list of fidelity_curve rows}; reference: a horizontal line (e.g. the
    target's own test accuracy)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    markers = "os^dvx*"
    for i, (label, rows) in enumerate(curves.items()):
        ax.plot([r["queries"] for r in rows], [r["fidelity"] for r in rows], markers[i % len(markers)] + "-",
                label=label)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1, label=reference_label or None)
    ax.set_xscale("log")
    ax.set(xlabel="queries answered by the API (log scale)", ylabel="fidelity (agreement with the target)",
           ylim=(0.45, 1.0), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig
