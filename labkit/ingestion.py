"""A hardened ingestion stage for training data: provenance, signed manifests, batch checks, quarantine.

It takes two kinds of data through one pipeline:

- **texts** (lab 08: SMS messages), checked against `Baseline`;
- **tabular records** (e.g. card transactions: a pandas DataFrame of numeric columns, a 0/1
  label, one source per batch), checked against `TabularBaseline`.

    baseline = ingestion.Baseline(trusted_texts, trusted_labels, trusted_sources)      # or
    baseline = ingestion.TabularBaseline(trusted_frame, trusted_labels, trusted_sources)
    pipeline = ingestion.IngestionPipeline(baseline, keys={"partner-feed": key})
    manifest = ingestion.sign_manifest(ingestion.build_manifest(items, labels, "partner-feed", "b3", at), key)
    decision = pipeline.submit(items, labels, manifest)     # accepted, or held in quarantine with reasons

Every item gets a provenance record (sha256 of the item, source, arrival time, label): a message
is hashed as its UTF-8 text (`sha256_text`), a tabular row as canonical JSON of its numbers
(`sha256_record`); `sha256_item` picks the one that fits. A batch arrives with a manifest of those
records signed with HMAC-SHA256 by its source; the pipeline verifies the signature and every hash,
then asks the baseline to compare the batch with trusted data (`baseline.check`):

- texts: token-distribution drift (Jensen-Shannon distance), token bursts (words suddenly common),
  the label rate of the source (binomial test) and near-duplicate bursts (TF-IDF cosine);
- records: per-column drift (two-sample Kolmogorov-Smirnov statistic), the label rate of the
  source (binomial test against that source's rate, shrunk towards the global one because
  positives such as fraud are rare) and exact-duplicate bursts.

Thresholds come from the baseline itself: clean batches of the same size drawn from it set each
limit. `TabularBaseline.drift_alarm` reuses the same per-column limits to watch serving-time
traffic, where no labels and no manifests exist.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from .models import tokenize

__all__ = ["Record", "ManifestError", "sha256_text", "sha256_record", "sha256_item", "record_hashes",
           "build_manifest", "sign_manifest", "verify_manifest", "Baseline", "TabularBaseline", "Decision",
           "IngestionPipeline"]


class ManifestError(ValueError):
    """A manifest is unsigned, its signature does not verify, or it does not match the batch."""


@dataclass(frozen=True)
class Record:
    """Provenance of one item (a message or a tabular row): what it is (sha256), where and when it
    came from, its label."""

    sha256: str
    source: str
    arrived_at: str
    label: int


def sha256_text(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"messages must be str; got {type(text).__name__}.")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_row(item) -> bool:
    # a pandas Series is a row too (it has .items() but is no Mapping)
    return isinstance(item, Mapping) or (hasattr(item, "items") and hasattr(item, "index") and hasattr(item, "dtype"))


def _number(column: str, value):
    """The canonical JSON value of one cell. Numbers hash by value, not by storage type: an integral
    float is written as the integer it equals (1.0 -> 1), because pandas turns ints into floats when
    a row mixes int and float columns (df.iloc[i]) or a column gains a missing value, and the same
    transaction must keep its hash. Other floats keep Python's repr (shortest exact round-trip)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)  # True/False count as 1/0
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(f"column {column!r} holds {f}: a record must hold finite numbers (NaN and inf have "
                             "no agreed encoding); fill or drop them before building the manifest.")
        return int(f) if f.is_integer() else f
    raise TypeError(f"column {column!r} holds {value!r} ({type(value).__name__}): a record holds numbers only; "
                    "encode categories as numbers before building the manifest.")


def sha256_record(row) -> str:
    """sha256 of one tabular row (a mapping column -> number, or a pandas Series) as canonical JSON:
    sorted keys, compact separators, ints as ints, floats by repr. Column order does not matter;
    1 and 1.0 hash the same (see `_number`); NaN, inf and non-numbers are refused. Anyone can
    recompute it: json.dumps(row, sort_keys=True, separators=(",", ":")) with integral floats as ints."""
    if not _is_row(row):
        raise TypeError(f"a record must be a mapping column -> number or a pandas Series; got {type(row).__name__}.")
    body = {}
    for column, value in row.items():
        if not isinstance(column, str):
            raise TypeError(f"column names must be str; got {column!r} ({type(column).__name__}).")
        body[column] = _number(column, value)
    if not body:
        raise ValueError("a record needs at least one column.")
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
                          .encode("utf-8")).hexdigest()


def sha256_item(item) -> str:
    """sha256_text for a message, sha256_record for a tabular row."""
    return sha256_text(item) if isinstance(item, str) else sha256_record(item)


def _is_frame(items) -> bool:
    return hasattr(items, "columns") and hasattr(items, "to_dict") and hasattr(items, "iloc")


def _as_items(items) -> list:
    """The batch as a list of items, one per record: texts stay texts, a DataFrame becomes its rows."""
    if isinstance(items, str):
        raise TypeError("pass a list of messages, not a single string.")
    if _is_frame(items):
        return items.to_dict("records")
    if isinstance(items, np.ndarray) and items.ndim == 2:
        raise TypeError("a 2-D array has no column names: pass a pandas DataFrame or a list of mappings.")
    items = list(items)
    kinds = {isinstance(x, str) for x in items}
    if len(kinds) > 1:
        raise TypeError("a batch holds either messages (str) or rows (mappings), not both.")
    return items


def record_hashes(items) -> list[str]:
    """sha256 of each item of a batch: a list of texts, a DataFrame (one per row) or a list of mappings."""
    return [sha256_item(x) for x in _as_items(items)]


def build_manifest(items, labels, source: str, batch_id: str, arrived_at: str) -> dict:
    """The unsigned manifest of a batch (texts, a DataFrame or a list of mappings): one provenance
    record per item."""
    hashes, labels = record_hashes(items), [int(v) for v in labels]
    if len(hashes) != len(labels):
        raise ValueError(f"{len(hashes)} items but {len(labels)} labels.")
    if not source or not batch_id:
        raise ValueError("a manifest needs a non-empty source and batch_id.")
    records = [asdict(Record(h, source, arrived_at, y)) for h, y in zip(hashes, labels)]
    return {"batch_id": batch_id, "source": source, "arrived_at": arrived_at, "records": records}


def _canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _key(key) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("an HMAC key must be at least 16 bytes (e.g. secrets.token_bytes(32)).")
    return key


def sign_manifest(manifest: dict, key) -> dict:
    """A copy of `manifest` with an HMAC-SHA256 signature over its canonical JSON."""
    signed = dict(manifest)
    signed["signature"] = hmac.new(_key(key), _canonical(manifest), hashlib.sha256).hexdigest()
    return signed


def verify_manifest(manifest: dict, key, items=None, labels=None, *, texts=None) -> None:
    """Raise ManifestError unless the signature verifies (constant-time compare) and, when the
    batch is given (texts, a DataFrame or a list of mappings), every item's sha256 and label match
    its record, in order. `texts=` is the older name of `items`."""
    if items is None:
        items = texts
    signature = manifest.get("signature")
    if not signature:
        raise ManifestError(f"manifest {manifest.get('batch_id')!r} is not signed: reject it.")
    expected = hmac.new(_key(key), _canonical(manifest), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        raise ManifestError(f"manifest {manifest.get('batch_id')!r}: the HMAC signature does not verify "
                            "(altered after signing, or signed with another key).")
    if items is not None:
        records = manifest["records"]
        items = _as_items(items)
        what = "messages" if items and isinstance(items[0], str) else "rows"
        if len(items) != len(records):
            raise ManifestError(f"batch holds {len(items)} {what}, its manifest {len(records)}.")
        for i, (item, rec) in enumerate(zip(items, records)):
            try:
                digest = sha256_item(item)
            except (TypeError, ValueError) as e:  # e.g. a value turned into NaN or text in transit
                raise ManifestError(f"{what[:-1]} {i} cannot be hashed, so it cannot match its record: {e}") from None
            if digest != rec["sha256"]:
                raise ManifestError(f"{what[:-1]} {i} does not match the sha256 in the manifest (altered in transit).")
        if labels is not None and [int(v) for v in labels] != [r["label"] for r in records]:
            raise ManifestError("the labels differ from the labels in the signed manifest.")


# ---------------------------------------------------------------------------------------------
# Statistical checks against the trusted baseline: texts
# ---------------------------------------------------------------------------------------------

def _doc_tokens(texts) -> list[set]:
    return [set(tokenize(t)) for t in texts]


def _distribution(texts, vocab: dict) -> np.ndarray:
    counts = np.zeros(len(vocab) + 1)  # the last cell counts tokens outside the baseline vocabulary
    for text in texts:
        for tok in tokenize(text):
            counts[vocab.get(tok, len(vocab))] += 1
    return counts


def _js(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    p = p_counts + 0.5
    q = q_counts + 0.5
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2))


@dataclass
class Decision:
    """The pipeline's verdict on one batch."""

    batch_id: str
    source: str
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "accepted" if self.accepted else "QUARANTINED"


class Baseline:
    """What trusted messages look like: token frequencies, document frequencies, label rate per
    source, a TF-IDF space for near-duplicates; limits calibrated on clean batches drawn from it;
    and `check`, the batch checks IngestionPipeline runs."""

    kind = "text"

    def __init__(self, texts, labels, sources, n_null: int = 30, quantile: float = 1.0, margin: float = 1.2,
                 duplicate_cosine: float = 0.9, seed: int = 0):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.texts = list(texts)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sources = np.asarray(list(sources))
        if not (len(self.texts) == len(self.labels) == len(self.sources)):
            raise ValueError("texts, labels and sources must have the same length.")
        if len(self.texts) < 100:
            raise ValueError(f"a baseline needs at least 100 trusted messages; got {len(self.texts)}.")
        counts = Counter(tok for t in self.texts for tok in tokenize(t))
        self.vocab = {tok: i for i, tok in enumerate(sorted(counts))}
        self.token_counts = _distribution(self.texts, self.vocab)
        docs = _doc_tokens(self.texts)
        self.doc_freq = Counter(tok for d in docs for tok in d)
        self.label_rate = {s: float(self.labels[self.sources == s].mean()) for s in np.unique(self.sources)}
        self.global_rate = float(self.labels.mean())
        self.tfidf = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None).fit(self.texts)
        self.duplicate_cosine = duplicate_cosine
        self.n_null, self.quantile, self.margin, self.seed = n_null, quantile, margin, seed
        self._limits: dict[int, dict] = {}

    # --- the statistics --------------------------------------------------------------------------
    def drift(self, texts) -> float:
        """Jensen-Shannon distance (base 2, in [0, 1]) between the batch's token distribution and the baseline's."""
        return _js(_distribution(texts, self.vocab), self.token_counts)

    def token_burst(self, texts, min_share: float = 0.05, ratio: float = 10.0) -> list[tuple[str, float, float]]:
        """Tokens in at least `min_share` of the batch's messages and `ratio` times more common
        there than in the baseline: (token, share in batch, share in baseline), commonest first."""
        docs = _doc_tokens(texts)
        n, n_base = max(len(docs), 1), len(self.texts)
        found = []
        for tok, c in Counter(tok for d in docs for tok in d).items():
            share, base = c / n, (self.doc_freq.get(tok, 0) + 1) / (n_base + 1)
            if share >= min_share and share / base >= ratio:
                found.append((tok, share, self.doc_freq.get(tok, 0) / n_base))
        return sorted(found, key=lambda x: -x[1])

    def duplicate_share(self, texts) -> float:
        """Fraction of the batch's messages with a near-duplicate (TF-IDF cosine >= duplicate_cosine)
        elsewhere in the same batch."""
        if len(texts) < 2:
            return 0.0
        x = self.tfidf.transform(list(texts))
        sim = (x @ x.T).toarray()
        np.fill_diagonal(sim, 0.0)
        return float((sim >= self.duplicate_cosine).any(axis=1).mean())

    def label_p_value(self, labels, source: str) -> tuple[float, float, float]:
        """Two-sided binomial test of the batch's spam count against the source's baseline rate:
        (p-value, batch rate, baseline rate)."""
        from scipy.stats import binomtest

        labels = np.asarray(labels, dtype=np.int64)
        rate = self.label_rate.get(source, self.global_rate)
        rate = min(max(rate, 1e-3), 1 - 1e-3)
        return float(binomtest(int(labels.sum()), len(labels), rate).pvalue), float(labels.mean()), rate

    # --- limits from clean batches of the same size ------------------------------------------------
    def limits(self, n: int) -> dict:
        """Drift and duplicate-share limits for a batch of n messages: the largest value seen on
        n_null clean batches drawn from the baseline, times a safety margin."""
        if n not in self._limits:
            rng = np.random.default_rng(self.seed)
            drifts, dups = [], []
            size = min(n, len(self.texts) // 2)
            for _ in range(self.n_null):
                idx = rng.choice(len(self.texts), size=size, replace=False)
                sample = [self.texts[i] for i in idx]
                drifts.append(self.drift(sample))
                dups.append(self.duplicate_share(sample))
            self._limits[n] = {"drift": float(np.quantile(drifts, self.quantile)) * self.margin,
                               "duplicates": float(np.quantile(dups, self.quantile)) * self.margin}
        return self._limits[n]

    # --- the batch checks ----------------------------------------------------------------------------
    def check(self, texts, labels, source: str, alpha: float = 1e-4, burst_min_share: float = 0.05,
              burst_ratio: float = 10.0) -> tuple[list[str], dict]:
        """The statistical checks on one batch of messages: (reasons to hold it, the measured statistics)."""
        texts, labels = _as_items(texts), np.asarray(labels, dtype=np.int64)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("this Baseline holds messages; for a table of records use TabularBaseline.")
        lim = self.limits(len(texts))
        drift, dup = self.drift(texts), self.duplicate_share(texts)
        burst = self.token_burst(texts, burst_min_share, burst_ratio)
        p, rate, base_rate = self.label_p_value(labels, source)
        stats = {"n": len(texts), "drift": drift, "drift_limit": lim["drift"], "duplicates": dup,
                 "duplicates_limit": lim["duplicates"], "burst_tokens": [t for t, _, _ in burst],
                 "spam_rate": rate, "baseline_spam_rate": base_rate, "label_p_value": p}
        reasons = []
        if drift > lim["drift"]:
            reasons.append(f"token drift: Jensen-Shannon distance {drift:.3f} above the limit {lim['drift']:.3f}")
        if burst:
            shown = ", ".join(f"'{t}' in {s:.0%} of messages (baseline {q:.1%})" for t, s, q in burst[:4])
            reasons.append(f"token burst: {shown}")
        if p < alpha:
            reasons.append(f"label rate: {rate:.1%} spam from {source!r} against {base_rate:.1%} in the baseline "
                           f"(binomial p = {p:.1e})")
        if dup > lim["duplicates"]:
            reasons.append(f"near-duplicate burst: {dup:.0%} of messages have a near-copy in the batch "
                           f"(limit {lim['duplicates']:.0%})")
        return reasons, stats


# ---------------------------------------------------------------------------------------------
# Statistical checks against the trusted baseline: tabular records
# ---------------------------------------------------------------------------------------------

def _ks_sorted(reference: np.ndarray, sample: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_reference - F_sample|, exactly as
    scipy.stats.ks_2samp computes it, from a reference sorted once. Between two distinct sample
    values the sample's CDF is flat and the reference's only rises, so the supremum sits at a
    sample value or just below one: two binary searches per distinct sample value, instead of
    merging and ranking both samples on every call (the baseline is large, batches are many)."""
    values, counts = np.unique(sample, return_counts=True)
    n, m = len(reference), len(sample)
    f_sample = np.cumsum(counts) / m                         # sample CDF at each distinct value
    f_sample_below = np.concatenate(([0.0], f_sample[:-1]))  # and just below it
    f_ref = np.searchsorted(reference, values, side="right") / n
    f_ref_below = np.searchsorted(reference, values, side="left") / n
    return float(max(np.abs(f_ref - f_sample).max(), np.abs(f_ref_below - f_sample_below).max()))


def _numeric_frame(items, columns=None, what: str = "batch"):
    """A DataFrame of finite numbers from a DataFrame or a list of mappings; with `columns`, the
    baseline's columns in the baseline's order (a missing one is an error here: `check` reports it
    as a schema reason before calling this)."""
    import pandas as pd

    frame = items if isinstance(items, pd.DataFrame) else pd.DataFrame(_as_items(items))
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"the {what} lacks the baseline's columns {missing}.")
        frame = frame[list(columns)]
    if len(frame) == 0:
        raise ValueError(f"the {what} holds no rows.")
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]  # bool counts as numeric
    if bad:
        raise TypeError(f"the {what}'s columns {bad} are not numeric: encode them as numbers first.")
    values = frame.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        cols = [c for c, ok in zip(frame.columns, np.isfinite(values).all(axis=0)) if not ok]
        raise ValueError(f"the {what} holds NaN or inf in columns {cols}: fill or drop them first.")
    return frame, values


class TabularBaseline:
    """What trusted tabular records look like (e.g. card transactions: numeric columns, a 0/1
    label such as fraud, a source such as the sending bank): each column's sorted values, the
    label rate per source, and limits calibrated on clean batches drawn from it.

    The same object serves two uses: `check` (through IngestionPipeline) on training batches, and
    `drift_alarm` on windows of serving-time traffic."""

    kind = "records"

    # n_null is larger than the text Baseline's 30: every column gets its own limit, and with nine
    # columns the largest of only 30 clean draws (about the 97th percentile per column) quarantined
    # roughly 1 clean batch in 12; with 200 draws it is about 1 in 200. Each draw costs a few ms.
    def __init__(self, frame, labels, sources, n_null: int = 200, quantile: float = 1.0, margin: float = 1.2,
                 seed: int = 0, prior_rows: float = 200.0, min_duplicate_rows: int = 4, positive: str = "fraud"):
        self.frame, values = _numeric_frame(frame, what="baseline")
        self.columns = list(self.frame.columns)
        if not all(isinstance(c, str) for c in self.columns):
            raise TypeError(f"column names must be str; got {self.columns}.")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sources = np.asarray(list(sources))
        if not (len(values) == len(self.labels) == len(self.sources)):
            raise ValueError("frame, labels and sources must have the same length.")
        if len(values) < 100:
            raise ValueError(f"a baseline needs at least 100 trusted rows; got {len(values)}.")
        if not np.isin(self.labels, (0, 1)).all():
            raise ValueError("labels must be 0 or 1.")
        self._values = values
        self._sorted = np.sort(values.T, axis=1)  # one contiguous sorted row per column, for the KS statistic
        self.means = dict(zip(self.columns, values.mean(axis=0)))
        self.global_rate = float(self.labels.mean())
        # Positives are rare (fraud well under 1%): a source's own count is noisy and can be 0, which
        # would make a single positive look impossible. Shrink each source's rate towards the global
        # rate with `prior_rows` pseudo-rows; a source with a long history keeps its own rate.
        self.label_rate = {}
        for s in np.unique(self.sources):
            y = self.labels[self.sources == s]
            self.label_rate[str(s)] = float((y.sum() + prior_rows * self.global_rate) / (len(y) + prior_rows))
        self.prior_rows, self.min_duplicate_rows, self.positive = prior_rows, min_duplicate_rows, positive
        self.n_null, self.quantile, self.margin, self.seed = n_null, quantile, margin, seed
        self._limits: dict[int, dict] = {}

    # --- the statistics --------------------------------------------------------------------------
    def drift(self, frame) -> dict[str, float]:
        """Per column, the two-sample Kolmogorov-Smirnov statistic (in [0, 1]) between the batch and
        the baseline: the largest gap between their cumulative distributions. For a 0/1 column it is
        the difference of the rates."""
        _, values = _numeric_frame(frame, self.columns)
        return self._drift(values)

    def _drift(self, values: np.ndarray) -> dict[str, float]:
        return {c: _ks_sorted(self._sorted[j], values[:, j]) for j, c in enumerate(self.columns)}

    def max_drift(self, frame) -> tuple[str, float]:
        """The column that drifts most and its KS statistic."""
        return max(self.drift(frame).items(), key=lambda kv: kv[1])

    def duplicate_share(self, frame) -> float:
        """Share of the batch's rows that exactly repeat another row of the batch (all columns equal)."""
        _, values = _numeric_frame(frame, self.columns)
        return self._duplicate_share(values)

    @staticmethod
    def _duplicate_share(values: np.ndarray) -> float:
        if len(values) < 2:
            return 0.0
        # each row as one opaque byte string, so that equal rows are equal keys (+ 0.0 turns -0.0 into 0.0);
        # several times faster than np.unique(axis=0)
        rows = np.ascontiguousarray(values + 0.0)
        keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        return float((counts[inverse] > 1).mean())

    def label_p_value(self, labels, source: str) -> tuple[float, float, float]:
        """Two-sided binomial test of the batch's positive count against the source's baseline rate
        (shrunk towards the global rate, see __init__; the global rate for an unknown source):
        (p-value, batch rate, baseline rate)."""
        from scipy.stats import binomtest

        labels = np.asarray(labels, dtype=np.int64)
        rate = self.label_rate.get(source, self.global_rate)
        rate = min(max(rate, 1e-6), 1 - 1e-6)  # a baseline without any positive still allows a few
        return float(binomtest(int(labels.sum()), len(labels), rate).pvalue), float(labels.mean()), rate

    # --- limits from clean batches of the same size ------------------------------------------------
    def limits(self, n: int) -> dict:
        """Limits for a batch of n rows: {"drift": {column: limit}, "duplicates": limit}, each the
        largest value seen on n_null clean batches drawn from the baseline, times a safety margin.

        A clean batch drawn from the baseline is part of it, which makes its KS statistic against
        the whole baseline too small; what it is compared with is the rest of the baseline, an
        independent sample as a real batch is. That statistic is exactly N / (N - m) times the one
        against the whole baseline (N baseline rows, m drawn), so no second sort is needed."""
        if n not in self._limits:
            rng = np.random.default_rng(self.seed)
            n_base = len(self._values)
            size = max(2, min(n, n_base // 2))
            scale = n_base / (n_base - size)
            drifts, dups = [], []
            for _ in range(self.n_null):
                sample = self._values[rng.choice(n_base, size=size, replace=False)]
                drifts.append([_ks_sorted(self._sorted[j], sample[:, j]) * scale for j in range(len(self.columns))])
                dups.append(self._duplicate_share(sample))
            drift = np.quantile(np.asarray(drifts), self.quantile, axis=0) * self.margin
            # floors: one odd row is no drift and two repeated pairs are no burst. Without them a value or
            # a duplicate that is rare but legitimate, absent from all n_null draws, would give a limit of 0.
            drift = np.maximum(drift, 2.0 / n)
            dup = max(float(np.quantile(dups, self.quantile)) * self.margin, self.min_duplicate_rows / n)
            self._limits[n] = {"drift": dict(zip(self.columns, map(float, drift))), "duplicates": dup}
        return self._limits[n]

    # --- the batch checks ----------------------------------------------------------------------------
    def _drift_sentences(self, drift: dict, limits: dict, values: np.ndarray) -> list[str]:
        """One sentence per column above its limit, the furthest above (relative to its limit) first."""
        over = []
        for j, c in enumerate(self.columns):
            if drift[c] > limits[c]:
                over.append((drift[c] / limits[c], f"{c!r} KS {drift[c]:.3f} above the limit {limits[c]:.3f} (mean "
                             f"{values[:, j].mean():.4g} in the batch, {self.means[c]:.4g} in the baseline)"))
        return [sentence for _, sentence in sorted(over, key=lambda x: -x[0])]

    def drift_alarm(self, frame) -> list[str]:
        """For monitoring serving-time traffic: one sentence per column whose KS statistic against
        the baseline is above its calibrated limit (empty when nothing drifts). Pass a window of
        recent requests (extra columns such as ids are ignored); the limits depend on the window's
        size and are computed once per size, so keep windows at a fixed size (e.g. the last 2,000
        requests). No labels are needed. A drift alarm says the inputs changed, not why: a new
        merchant, a holiday, or someone probing the model."""
        _, values = _numeric_frame(frame, self.columns, what="window")
        return self._drift_sentences(self._drift(values), self.limits(len(values))["drift"], values)

    def check(self, frame, labels, source: str, alpha: float = 1e-4) -> tuple[list[str], dict]:
        """The statistical checks on one batch of rows (a DataFrame or a list of mappings):
        (reasons to hold it, the measured statistics)."""
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            rows = _as_items(frame)
            if rows and isinstance(rows[0], str):
                raise TypeError("this TabularBaseline holds records; for messages use Baseline.")
            frame = pd.DataFrame(rows)
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(frame):
            raise ValueError(f"{len(frame)} rows but {len(labels)} labels.")
        if not np.isin(labels, (0, 1)).all():
            return [f"schema: labels must be 0 or 1; got {sorted(set(labels.tolist()) - {0, 1})}"], {"n": len(frame)}
        missing = [c for c in self.columns if c not in frame.columns]
        extra = [str(c) for c in frame.columns if c not in self.columns]
        if missing or extra:
            return [f"schema: the batch's columns differ from the baseline's (missing {missing}, "
                    f"unexpected {extra})"], {"n": len(frame), "missing_columns": missing,
                                               "unexpected_columns": extra}
        try:
            frame, values = _numeric_frame(frame, self.columns)
        except (TypeError, ValueError) as e:
            return [f"schema: {e}"], {"n": len(frame)}
        lim = self.limits(len(frame))
        drift = self._drift(values)
        worst = max(drift, key=drift.get)
        dup = self._duplicate_share(values)
        p, rate, base_rate = self.label_p_value(labels, source)
        stats = {"n": len(frame), "drift": drift, "drift_limit": lim["drift"], "max_drift_column": worst,
                 "max_drift": drift[worst], "duplicates": dup, "duplicates_limit": lim["duplicates"],
                 "label_rate": rate, "baseline_label_rate": base_rate, "label_p_value": p}
        reasons = [f"feature drift: {s}" for s in self._drift_sentences(drift, lim["drift"], values)]
        if p < alpha:
            reasons.append(f"label rate: {rate:.1%} {self.positive} from {source!r} against {base_rate:.1%} in the "
                           f"baseline (binomial p = {p:.1e})")
        if dup > lim["duplicates"]:
            reasons.append(f"duplicate burst: {dup:.1%} of rows exactly repeat another row of the batch "
                           f"(limit {lim['duplicates']:.1%})")
        return reasons, stats


# ---------------------------------------------------------------------------------------------
# The pipeline: provenance first, then the baseline's checks
# ---------------------------------------------------------------------------------------------

class IngestionPipeline:
    """Verify provenance, run the baseline's checks, accept or quarantine. Works with a text
    `Baseline` (items: a list of messages) or a `TabularBaseline` (items: a DataFrame or a list of
    mappings). Accepted batches join `accepted`; suspicious ones wait in `quarantine` with their
    reasons for a person to review.

    `burst_min_share` and `burst_ratio` go to the text checks only; any other keyword in
    `check_options` goes to `baseline.check` as is."""

    def __init__(self, baseline: Baseline | TabularBaseline, keys: dict, alpha: float = 1e-4,
                 burst_min_share: float = 0.05, burst_ratio: float = 10.0, **check_options):
        self.baseline, self.keys, self.alpha = baseline, dict(keys), alpha
        self.burst_min_share, self.burst_ratio = burst_min_share, burst_ratio
        self.check_options = check_options
        self.accepted: dict[str, dict] = {}
        self.quarantine: dict[str, dict] = {}
        self.log: list[Decision] = []

    def check(self, items, labels, source: str) -> tuple[list[str], dict]:
        """The statistical checks alone: (reasons to hold the batch, the measured statistics)."""
        options = dict(self.check_options)
        if getattr(self.baseline, "kind", "text") == "text":
            options = {"burst_min_share": self.burst_min_share, "burst_ratio": self.burst_ratio, **options}
        return self.baseline.check(items, labels, source, alpha=self.alpha, **options)

    def submit(self, items, labels, manifest: dict) -> Decision:
        text = getattr(self.baseline, "kind", "text") == "text"
        items = _as_items(items) if text or not _is_frame(items) else items  # a DataFrame stays one
        labels = np.asarray(labels, dtype=np.int64)
        source, batch_id = manifest.get("source", "?"), manifest.get("batch_id", "?")
        reasons, stats = [], {}
        if source not in self.keys:
            reasons.append(f"provenance: unknown source {source!r} (no key on file)")
        else:
            try:
                verify_manifest(manifest, self.keys[source], items, labels)
            except ManifestError as e:
                reasons.append(f"provenance: {e}")
        if not reasons:
            reasons, stats = self.check(items, labels, source)
        decision = Decision(batch_id, source, not reasons, reasons, stats)
        target = self.accepted if decision.accepted else self.quarantine
        target[batch_id] = {"items": items, "labels": labels, "manifest": manifest, "decision": decision}
        if text:
            target[batch_id]["texts"] = items  # text entries keep their older key as well
        self.log.append(decision)
        return decision
