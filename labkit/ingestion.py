"""A hardened ingestion stage for training data: provenance, signed manifests, batch checks, quarantine.

    baseline = ingestion.Baseline(trusted_texts, trusted_labels, trusted_sources)
    pipeline = ingestion.IngestionPipeline(baseline, keys={"partner-feed": key})
    manifest = ingestion.sign_manifest(ingestion.build_manifest(texts, labels, "partner-feed", "b3", at), key)
    decision = pipeline.submit(texts, labels, manifest)     # accepted, or held in quarantine with reasons

Every message gets a provenance record (sha256 of its text, source, arrival time, label). A batch
arrives with a manifest of those records signed with HMAC-SHA256 by its source; the pipeline
verifies the signature and every hash, then compares the batch with the trusted baseline:
token-distribution drift (Jensen-Shannon distance), token bursts (words suddenly common), the
label rate of the source (binomial test) and near-duplicate bursts (TF-IDF cosine). Thresholds
come from the baseline itself: clean batches of the same size drawn from it set each limit.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from .models import tokenize

__all__ = ["Record", "ManifestError", "sha256_text", "build_manifest", "sign_manifest", "verify_manifest",
           "Baseline", "Decision", "IngestionPipeline"]


class ManifestError(ValueError):
    """A manifest is unsigned, its signature does not verify, or it does not match the batch."""


@dataclass(frozen=True)
class Record:
    """Provenance of one message: what it is (sha256), where and when it came from, its label."""

    sha256: str
    source: str
    arrived_at: str
    label: int


def sha256_text(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"messages must be str; got {type(text).__name__}.")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_manifest(texts, labels, source: str, batch_id: str, arrived_at: str) -> dict:
    """The unsigned manifest of a batch: one provenance record per message."""
    texts, labels = list(texts), [int(v) for v in labels]
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} messages but {len(labels)} labels.")
    if not source or not batch_id:
        raise ValueError("a manifest needs a non-empty source and batch_id.")
    records = [asdict(Record(sha256_text(t), source, arrived_at, y)) for t, y in zip(texts, labels)]
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


def verify_manifest(manifest: dict, key, texts=None, labels=None) -> None:
    """Raise ManifestError unless the signature verifies (constant-time compare) and, when the
    batch is given, every message's sha256 and label match its record, in order."""
    signature = manifest.get("signature")
    if not signature:
        raise ManifestError(f"manifest {manifest.get('batch_id')!r} is not signed: reject it.")
    expected = hmac.new(_key(key), _canonical(manifest), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        raise ManifestError(f"manifest {manifest.get('batch_id')!r}: the HMAC signature does not verify "
                            "(altered after signing, or signed with another key).")
    if texts is not None:
        records = manifest["records"]
        texts = list(texts)
        if len(texts) != len(records):
            raise ManifestError(f"batch holds {len(texts)} messages, its manifest {len(records)}.")
        for i, (text, rec) in enumerate(zip(texts, records)):
            if sha256_text(text) != rec["sha256"]:
                raise ManifestError(f"message {i} does not match the sha256 in the manifest (altered in transit).")
        if labels is not None and [int(v) for v in labels] != [r["label"] for r in records]:
            raise ManifestError("the labels differ from the labels in the signed manifest.")


# ---------------------------------------------------------------------------------------------
# Statistical checks against the trusted baseline
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
    """What trusted data looks like: token frequencies, document frequencies, label rate per
    source, a TF-IDF space for near-duplicates; and limits calibrated on clean batches drawn from it."""

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


class IngestionPipeline:
    """Verify provenance, run the checks, accept or quarantine. Accepted batches join
    `accepted`; suspicious ones wait in `quarantine` with their reasons for a person to review."""

    def __init__(self, baseline: Baseline, keys: dict, alpha: float = 1e-4, burst_min_share: float = 0.05,
                 burst_ratio: float = 10.0):
        self.baseline, self.keys, self.alpha = baseline, dict(keys), alpha
        self.burst_min_share, self.burst_ratio = burst_min_share, burst_ratio
        self.accepted: dict[str, dict] = {}
        self.quarantine: dict[str, dict] = {}
        self.log: list[Decision] = []

    def check(self, texts, labels, source: str) -> tuple[list[str], dict]:
        """The statistical checks alone: (reasons to hold the batch, the measured statistics)."""
        texts, labels = list(texts), np.asarray(labels, dtype=np.int64)
        b = self.baseline
        lim = b.limits(len(texts))
        drift, dup = b.drift(texts), b.duplicate_share(texts)
        burst = b.token_burst(texts, self.burst_min_share, self.burst_ratio)
        p, rate, base_rate = b.label_p_value(labels, source)
        stats = {"n": len(texts), "drift": drift, "drift_limit": lim["drift"], "duplicates": dup,
                 "duplicates_limit": lim["duplicates"], "burst_tokens": [t for t, _, _ in burst],
                 "spam_rate": rate, "baseline_spam_rate": base_rate, "label_p_value": p}
        reasons = []
        if drift > lim["drift"]:
            reasons.append(f"token drift: Jensen-Shannon distance {drift:.3f} above the limit {lim['drift']:.3f}")
        if burst:
            shown = ", ".join(f"'{t}' in {s:.0%} of messages (baseline {q:.1%})" for t, s, q in burst[:4])
            reasons.append(f"token burst: {shown}")
        if p < self.alpha:
            reasons.append(f"label rate: {rate:.1%} spam from {source!r} against {base_rate:.1%} in the baseline "
                           f"(binomial p = {p:.1e})")
        if dup > lim["duplicates"]:
            reasons.append(f"near-duplicate burst: {dup:.0%} of messages have a near-copy in the batch "
                           f"(limit {lim['duplicates']:.0%})")
        return reasons, stats

    def submit(self, texts, labels, manifest: dict) -> Decision:
        texts, labels = list(texts), np.asarray(labels, dtype=np.int64)
        source, batch_id = manifest.get("source", "?"), manifest.get("batch_id", "?")
        reasons, stats = [], {}
        if source not in self.keys:
            reasons.append(f"provenance: unknown source {source!r} (no key on file)")
        else:
            try:
                verify_manifest(manifest, self.keys[source], texts, labels)
            except ManifestError as e:
                reasons.append(f"provenance: {e}")
        if not reasons:
            reasons, stats = self.check(texts, labels, source)
        decision = Decision(batch_id, source, not reasons, reasons, stats)
        target = self.accepted if decision.accepted else self.quarantine
        target[batch_id] = {"texts": texts, "labels": labels, "manifest": manifest, "decision": decision}
        self.log.append(decision)
        return decision
