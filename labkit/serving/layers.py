"""The defence layers, each a small piece that works (and is tested) on its own.

    Defences          which layers are on, and their settings (all off = the undefended API)
    request_models    pydantic request bodies: types, ranges learned from training data, no NaN/inf
    KeyStore          API keys stored as sha256 digests, compared with hmac.compare_digest
    RateLimiter       per-key sliding-window limit, exact under concurrency (one lock)
    OODDetector       Mahalanobis distance on model.ood_features (or .features), threshold = a stated clean false-reject rate
    QueryMonitor      per-key detection of extraction (PRADA, Juuti et al. 2019) and of probing
    harden            label only / rounded / noisy probabilities
    AuditLog          append-only JSON lines chained by sha256; count and head signed (HMAC) in an anchor kept apart
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

OUTPUT_MODES = ("probabilities", "rounded", "label")


@dataclass(frozen=True)
class Defences:
    """Which defence layers the API runs. `Defences()` is the undefended API; `Defences.all()`
    switches every layer on; `d.but(rate_limit=None)` is a copy with some settings changed."""

    schema: bool = False               # pydantic validation: types, learned ranges, no NaN/inf, unknown fields refused
    max_body_bytes: int = 65_536       # with schema: larger bodies get 413 before they are parsed
    max_batch: int = 64                # with schema: the most instances one /predict/batch call may carry
    max_text_chars: int = 2_000        # with schema: text inputs longer than this are refused
    auth: bool = False                 # API keys: 401 missing, 403 unknown
    rate_limit: int | None = None      # queries per key per window (a batch of n counts n); None = off
    rate_window_s: float = 60.0
    ood: bool = False                  # refuse inputs unlike the training data
    ood_false_reject_rate: float = 0.01  # share of clean traffic the OOD threshold may refuse (calibrated)
    output: str = "probabilities"      # "probabilities", "rounded" or "label"
    round_digits: int = 1              # with output="rounded"
    output_noise: float = 0.0          # std of Gaussian noise on returned probabilities (label kept)
    audit: bool = False                # append-only JSON-lines audit log (needs audit_path)
    integrity: bool = False            # check the model file's sha256 at start-up (needs a path and sha256)
    detect_extraction: bool = False    # PRADA per key; a flagged key is refused afterwards
    prada_test: str = "shapiro"        # "shapiro" (PRADA as published) or "reference" (KS test against clean streams)
    prada_threshold: float = 0.90      # shapiro: flag when W of the key's distance distribution falls below
    prada_ks_threshold: float = 0.35   # reference: flag when the KS statistic to the clean distances exceeds
    prada_min_queries: int = 100       # distances needed before the test runs
    prada_window: int = 500            # the test looks at the key's most recent distances
    detect_probing: bool = False       # many near-duplicate queries from one key (evasion search)
    probe_radius: float | None = None  # "near" in feature space; None = calibrated from reference data
    probe_limit: int = 20              # near-duplicates within the last probe_window queries that flag a key
    # (calibrated: honest streams of 2,000-3,000 held-out clients or reviews reach at most 12 near-duplicates in
    # any 50 queries, so 10 flagged 4 of 20 honest credit streams; an evasion search reaches 20 within ~21 queries)
    probe_window: int = 50
    verbose_errors: bool = False       # errors name learned ranges, the OOD threshold, detector statistics (labs, debugging)

    def __post_init__(self):
        if self.output not in OUTPUT_MODES:
            raise ValueError(f"output={self.output!r}: use one of {', '.join(OUTPUT_MODES)}.")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ValueError("rate_limit must be a positive number of queries per window, or None to switch it off.")
        if not 0 < self.ood_false_reject_rate < 0.5:
            raise ValueError("ood_false_reject_rate is a share of clean traffic, e.g. 0.01 for 1%.")
        if self.prada_test not in ("shapiro", "reference"):
            raise ValueError(f"prada_test={self.prada_test!r}: use 'shapiro' or 'reference'.")
        if self.output_noise < 0:
            raise ValueError("output_noise is a standard deviation; use 0 (off) or a positive number.")

    @classmethod
    def none(cls) -> "Defences":
        return cls()

    @classmethod
    def all(cls, **overrides) -> "Defences":
        # PRADA's reference test, not Shapiro-Wilk: on real clients' streams a fixed W threshold flags honest keys
        # (see QueryMonitor); the reference test's false-flag rate is measured in tests/test_serving_prada.py.
        base = cls(schema=True, auth=True, rate_limit=600, ood=True, output="rounded", audit=True, integrity=True,
                   detect_extraction=True, detect_probing=True, prada_test="reference")
        return replace(base, **overrides)

    def but(self, **changes) -> "Defences":
        return replace(self, **changes)

    def layers_on(self) -> list[str]:
        on = [name for name in ("schema", "auth", "ood", "audit", "integrity", "detect_extraction", "detect_probing")
              if getattr(self, name)]
        if self.rate_limit is not None:
            on.append("rate_limit")
        if self.output != "probabilities" or self.output_noise > 0:
            on.append("output")
        return on


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------

def request_models(model, defences: Defences):
    """(single request model, batch request model) for the model's input kind."""
    from pydantic import BaseModel, ConfigDict, Field, create_model

    forbid = ConfigDict(extra="forbid")
    if model.kind == "tabular":
        specs = {}
        for r in model.ranges:
            kind = int if r.integer else float
            # strict: no "12" strings, no true/false as 1/0 (a JSON integer is still a valid float)
            specs[r.name] = (kind, Field(ge=r.low, le=r.high, allow_inf_nan=False, strict=True))
        Features = create_model("CreditFeatures", __config__=forbid, **specs)
        Single = create_model("CreditRequest", __config__=forbid, features=(Features, ...))
    else:
        Single = create_model("TextRequest", __config__=forbid,
                              text=(str, Field(min_length=1, max_length=defences.max_text_chars, strict=True)))
    Batch = create_model("BatchRequest", __config__=forbid,
                         instances=(list[Single], Field(min_length=1, max_length=defences.max_batch)))
    return Single, Batch


# Pydantic messages that state a learned bound ("less than or equal to 1000000"): quiet mode hides the number.
BOUND_ERRORS = {"less_than", "less_than_equal", "greater_than", "greater_than_equal", "finite_number"}


def describe_validation_error(err, verbose: bool = False) -> tuple[str, str, list[str]]:
    """(error kind, one readable sentence, fields) from a pydantic ValidationError. Unless `verbose`,
    a range error names the field but not the learned bound (the bound is part of the decision
    surface an attacker is mapping)."""
    errors = err.errors(include_url=False, include_input=False)
    for e in errors:
        if e["type"] == "json_invalid" and "number out of range" in e["msg"]:
            # valid JSON (the grammar has no size limit), but no number the model can take
            return "invalid_input", "body: a number in the body has too many digits.", ["body"]
    if any(e["type"] == "json_invalid" for e in errors):
        return "invalid_json", "The body is not valid JSON.", []
    where = [".".join(str(p) for p in e["loc"]) or "body" for e in errors]
    msgs = [e["msg"] if verbose or e["type"] not in BOUND_ERRORS else "outside the accepted range" for e in errors]
    parts = [f"{w}: {m}" for w, m in zip(where, msgs)][:5]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid_input", "; ".join(parts) + more, where


# ---------------------------------------------------------------------------------------------
# API keys
# ---------------------------------------------------------------------------------------------

def hash_key(key: str) -> str:
    """API keys are long random strings, so a plain sha256 digest is the usual way to store them."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """Issued API keys, stored only as sha256 digests, each mapped to a client name."""

    def __init__(self):
        self._digests: dict[str, str] = {}

    def issue(self, client: str) -> str:
        """Create a key for `client` and return it (the only time the key exists in clear)."""
        key = "lk_" + secrets.token_urlsafe(24)
        self._digests[hash_key(key)] = client
        return key

    def revoke(self, client: str) -> None:
        self._digests = {d: c for d, c in self._digests.items() if c != client}

    @property
    def clients(self) -> list[str]:
        return sorted(set(self._digests.values()))

    def identify(self, presented: str | None) -> str | None:
        """The client a presented key belongs to, or None. Every stored digest is compared in
        constant time, so the time taken says nothing about how close a forged key came."""
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for stored, client in self._digests.items():
            if hmac.compare_digest(stored, digest):
                found = client
        return found


# ---------------------------------------------------------------------------------------------
# Rate limiting
# ---------------------------------------------------------------------------------------------

def sliding_window_allow(log: deque, now: float, limit: int, window_s: float) -> tuple[bool, float]:
    """One query at time `now` for a client whose accepted query times are in `log` (oldest
    first): drop times older than the window, accept (and record `now`) while fewer than `limit`
    remain, else say how long until the oldest one leaves the window."""
    while log and log[0] <= now - window_s:
        log.popleft()
    if len(log) < limit:
        log.append(now)
        return True, 0.0
    return False, max(log[0] + window_s - now, 0.001)


class RateLimiter:
    """At most `limit` queries per key in any `window_s` seconds (a sliding window log).
    One lock around check-and-record makes it exact however many clients race."""

    def __init__(self, limit: int, window_s: float = 60.0, clock=time.monotonic, decide=None):
        self.limit, self.window_s, self.clock = int(limit), float(window_s), clock
        self.decide = decide or sliding_window_allow  # decide(log, now, limit, window_s) -> (allowed, retry_after)
        self._log: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def acquire(self, key: str, cost: int = 1) -> tuple[bool, float]:
        """(allowed, seconds until `cost` more queries would be allowed)."""
        with self._lock:
            if cost > self.limit:
                return False, self.window_s
            now, log = self.clock(), self._log[key]
            for i in range(cost):
                allowed, retry = self.decide(log, now, self.limit, self.window_s)
                if not allowed:
                    for _ in range(i):  # all or nothing: give back what this batch took
                        log.pop()
                    return False, retry
            return True, 0.0

    def used(self, key: str) -> int:
        with self._lock:
            now = self.clock()
            return sum(1 for t in self._log[key] if t > now - self.window_s)


# ---------------------------------------------------------------------------------------------
# Out-of-distribution rejection
# ---------------------------------------------------------------------------------------------

def ood_features(model, inputs) -> np.ndarray:
    """The view OOD scoring uses: model.ood_features when the model has one, else model.features."""
    return getattr(model, "ood_features", model.features)(inputs)


class OODDetector:
    """Mahalanobis distance (Ledoit-Wolf covariance) of model.features to the clean data; inputs
    scoring above the threshold are refused. The threshold is the (1 - false_reject_rate)
    quantile of scores on clean calibration inputs that the covariance was not fitted on."""

    def __init__(self, mean, scale, precision, threshold: float, false_reject_rate: float):
        self.mean, self.scale, self.precision = np.asarray(mean), np.asarray(scale), np.asarray(precision)
        self.threshold, self.false_reject_rate = float(threshold), float(false_reject_rate)

    def score(self, feats) -> np.ndarray:
        d = (np.atleast_2d(np.asarray(feats, float)) - self.mean) / self.scale
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0))

    def is_ood(self, feats) -> np.ndarray:
        s = self.score(feats)
        return ~np.isfinite(s) | (s > self.threshold)

    @classmethod
    def calibrate(cls, model, clean_inputs, false_reject_rate: float = 0.01, seed: int = 0) -> "OODDetector":
        from sklearn.covariance import LedoitWolf

        feats = np.asarray(ood_features(model, clean_inputs), float)
        if len(feats) < 200:
            raise ValueError(f"OOD calibration needs at least 200 clean inputs (got {len(feats)}): pass more "
                             "training rows as reference=.")
        order = np.random.default_rng(seed).permutation(len(feats))
        fit, calib = feats[order[: len(feats) // 2]], feats[order[len(feats) // 2:]]
        # standardise first: Ledoit-Wolf shrinks toward a multiple of the identity, which would
        # drown a narrow feature (e.g. the share of known words) among wide ones
        mean, scale = fit.mean(0), fit.std(0) + 1e-9
        lw = LedoitWolf(assume_centered=True).fit((fit - mean) / scale)
        detector = cls(mean, scale, lw.precision_, np.inf, false_reject_rate)
        detector.threshold = float(np.quantile(detector.score(calib), 1 - false_reject_rate))
        return detector


# ---------------------------------------------------------------------------------------------
# Per-key query monitoring: extraction (PRADA) and probing
# ---------------------------------------------------------------------------------------------

@dataclass
class _History:
    growing: dict = field(default_factory=dict)      # class -> list of feature vectors (PRADA's G_c)
    dists: dict = field(default_factory=dict)        # class -> list of minimum distances (D_c)
    thresholds: dict = field(default_factory=dict)   # class -> T_c
    all_dists: list = field(default_factory=list)    # every minimum distance, in order
    recent: deque = field(default_factory=deque)
    near: deque = field(default_factory=deque)
    queries: int = 0
    last_w: float | None = None
    seen: np.ndarray | None = None                   # every earlier query (test="reference")
    n_seen: int = 0


@dataclass
class Flag:
    client: str
    reason: str       # "extraction" or "probing"
    after_queries: int
    detail: str


class QueryMonitor:
    """Watches each key's stream of queries (feature vectors and predicted classes).

    Extraction (PRADA, Juuti et al. 2019): for every query, the distance to the nearest earlier
    query of the same predicted class is recorded; the query joins the class's growing set when
    that distance exceeds T_c = mean - std of the distances so far. Natural queries give roughly
    normally distributed distances; synthetic ones (perturbations, interpolations, random points)
    do not. Once `min_queries` distances exist, the Shapiro-Wilk statistic W of the key's latest
    `window` distances below `threshold` flags the key.

    With test="reference", each query's distance to the nearest of ALL the key's earlier queries
    is recorded, and the key's latest distances are compared with those of simulated clean
    clients at the same positions in their streams (`reference_distances`) by a two-sample
    Kolmogorov-Smirnov test: a statistic above `ks_threshold` flags the key. Useful where natural
    queries are themselves far from normal (tabular data with many duplicates and heavy tails).

    Probing: a key whose queries land within `probe_radius` of one of its own `probe_recent`
    previous queries at least `probe_limit` times in its last `probe_window` queries is walking
    towards a decision boundary (the search an evasion attack makes).
    """

    def __init__(self, extraction: bool = True, probing: bool = True, threshold: float = 0.90,
                 min_queries: int = 100, window: int = 500, probe_radius: float = 0.5, probe_limit: int = 20,
                 probe_window: int = 50, probe_recent: int = 5, max_growing: int = 5_000, test: str = "shapiro", reference=None,
                 ks_threshold: float = 0.35):
        if test == "reference" and (reference is None or np.size(reference) < 50):
            raise ValueError("test='reference' needs reference= distances from clean streams "
                             "(QueryMonitor.reference_distances(model, clean_inputs)).")
        self.test, self.ks_threshold = test, float(ks_threshold)
        # reference: (streams, positions) distances of simulated clean clients; the i-th distance of a
        # key is compared with the i-th distances of the clean streams (distances shrink as a stream
        # grows, so comparing a young key with old streams would be biased). A 1-D array is pooled.
        self.reference = None if reference is None else np.asarray(reference, float)
        self.extraction, self.probing = extraction, probing
        self.threshold, self.min_queries, self.window = threshold, int(min_queries), int(window)
        self.probe_radius, self.probe_limit, self.probe_window = float(probe_radius), int(probe_limit), int(probe_window)
        self.probe_recent, self.max_growing = int(probe_recent), int(max_growing)
        self.flags: dict[str, Flag] = {}
        self._hist: dict[str, _History] = defaultdict(_History)
        self._lock = threading.Lock()

    @staticmethod
    def calibrate_radius(model, clean_inputs, quantile: float = 0.01, seed: int = 0, pairs: int = 20_000) -> float:
        """A radius that only `quantile` of pairs of independent clean inputs fall within: the chance
        that a benign client's query lands that close to one of its previous few by accident."""
        feats = np.asarray(model.features(clean_inputs), float)
        rng = np.random.default_rng(seed)
        a, b = rng.integers(0, len(feats), pairs), rng.integers(0, len(feats), pairs)
        keep = a != b
        dist = np.sqrt(((feats[a[keep]] - feats[b[keep]]) ** 2).sum(1))
        return float(np.quantile(dist, quantile))

    @classmethod
    def reference_distances(cls, model, clean_inputs, stream: int = 5_000, streams: int = 8, seed: int = 0,
                            block: int = 512) -> np.ndarray:
        """PRADA distances of `streams` simulated clients, each sending `stream` clean inputs in a
        random order (at most as many as there are): an array (streams, stream - 1), row = client,
        column = query position. Long streams matter: a key's distances shrink as it sends more, so
        a key 3,000 queries in must be compared with clean clients 3,000 queries in, not 600
        (beyond the last position the latest positions are used; the monitor stops growing its
        set of earlier queries at max_growing = 5,000, so distances settle there)."""
        feats = np.asarray(model.features(clean_inputs), float)
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(streams):
            f = feats[rng.permutation(len(feats))[:stream]]
            sq = (f ** 2).sum(1)
            nearest = np.empty(len(f) - 1)
            for start in range(1, len(f), block):  # in blocks: a full (n, n) matrix would not fit for long streams
                stop = min(start + block, len(f))
                d2 = sq[start:stop, None] + sq[None, :stop] - 2 * f[start:stop] @ f[:stop].T
                d2[np.arange(stop - start)[:, None] + start <= np.arange(stop)[None, :]] = np.inf  # earlier only
                nearest[start - 1:stop - 1] = np.sqrt(np.maximum(d2.min(1), 0))
            out.append(nearest)
        return np.stack(out)

    def flagged(self, client: str) -> Flag | None:
        return self.flags.get(client)

    def suspend(self, client: str, reason: str = "manual", detail: str = "suspended by the API owner") -> Flag:
        """Suspend a key by hand (e.g. after an alert); requests in flight are refused too."""
        with self._lock:
            flag = self.flags.setdefault(client, Flag(client, reason, self._hist[client].queries if client in
                                                      self._hist else 0, detail))
        return flag

    def statistic(self, client: str) -> float | None:
        """The latest test statistic of a key (W for shapiro, KS for reference), or None."""
        return self._hist[client].last_w if client in self._hist else None

    def w_statistic(self, client: str) -> float | None:
        return self._hist[client].last_w if client in self._hist else None

    def distances(self, client: str) -> np.ndarray:
        return np.array(self._hist[client].all_dists) if client in self._hist else np.array([])

    def observe(self, client: str, feats: np.ndarray, label: int) -> Flag | None:
        """Record one query; return a new Flag when this query tips the key over."""
        from scipy.stats import ks_2samp, shapiro

        x = np.asarray(feats, float).reshape(-1)
        with self._lock:
            h = self._hist[client]
            h.queries += 1
            # probing: distance to the key's recent queries, whatever their class
            if self.probing and h.recent:
                nearest = float(np.sqrt(((np.asarray(h.recent) - x) ** 2).sum(1)).min())
                h.near.append(nearest <= self.probe_radius)
                if len(h.near) > self.probe_window:
                    h.near.popleft()
            h.recent.append(x)
            if len(h.recent) > self.probe_recent:
                h.recent.popleft()
            if self.extraction and self.test == "reference":
                # distance to the nearest of ALL the key's earlier queries (no per-class growing set:
                # its thresholds make each clean stream's distances idiosyncratic)
                if h.seen is not None and h.n_seen:
                    d = float(np.sqrt(((h.seen[:h.n_seen] - x) ** 2).sum(1)).min())
                    h.all_dists.append(d)
                if h.seen is None:
                    h.seen = np.empty((64, len(x)))
                if h.n_seen < self.max_growing:
                    if h.n_seen == len(h.seen):
                        h.seen = np.vstack([h.seen, np.empty_like(h.seen)])
                    h.seen[h.n_seen] = x
                    h.n_seen += 1
            # PRADA as published
            if self.extraction and self.test == "shapiro":
                grow = h.growing.setdefault(label, [])
                if grow:
                    d = float(np.sqrt(((np.asarray(grow) - x) ** 2).sum(1)).min())
                    dc = h.dists.setdefault(label, [])
                    dc.append(d)
                    h.all_dists.append(d)
                    t = max(h.thresholds.get(label, 0.0), float(np.mean(dc) - np.std(dc)))
                    h.thresholds[label] = t
                    if d > t and len(grow) < self.max_growing:
                        grow.append(x)
                else:
                    grow.append(x)
            if client in self.flags:
                return None
            if self.probing and sum(h.near) >= self.probe_limit:
                self.flags[client] = Flag(client, "probing", h.queries,
                                          f"{sum(h.near)} of its last {len(h.near)} queries were within "
                                          f"{self.probe_radius:.3g} of an earlier query")
                return self.flags[client]
            if self.extraction and len(h.all_dists) >= self.min_queries:
                recent = np.array(h.all_dists[-self.window:])
                if self.test == "shapiro":
                    w = 0.0 if np.ptp(recent) == 0 else float(shapiro(recent).statistic)
                    h.last_w = w
                    tripped, detail = w < self.threshold, f"Shapiro-Wilk W = {w:.3f} < {self.threshold}"
                else:
                    ref = self.reference
                    if ref.ndim == 2:
                        n = len(h.all_dists)
                        start, stop = max(n - len(recent), 0), min(n, ref.shape[1])
                        start = min(start, stop - len(recent)) if stop - len(recent) > 0 else 0
                        ref = ref[:, start:stop].ravel()
                    w = float(ks_2samp(recent, ref).statistic)
                    h.last_w = w
                    tripped, detail = w > self.ks_threshold, f"KS statistic {w:.3f} > {self.ks_threshold} to clean traffic"
                if tripped:
                    self.flags[client] = Flag(client, "extraction", h.queries,
                                              f"{detail} over its last {len(recent)} query distances")
                    return self.flags[client]
        return None

    def reset(self, client: str) -> None:
        with self._lock:
            self.flags.pop(client, None)
            self._hist.pop(client, None)


def honest_streams(monitor: QueryMonitor, model, rows, n_streams: int, n_queries: int,
                   seed: int = 0) -> tuple[list, list[float]]:
    """Calibrate a monitor on honest traffic: feed it n_streams clients, each sending n_queries held-out
    rows in a random order (stream s uses seed + s). Returns each client's Flag (None when not flagged)
    and its worst statistic (largest KS for the reference test, lowest Shapiro-Wilk W otherwise)."""
    feats, labels = model.features(rows), model.predict(rows)
    flags, worst = [], []
    for s in range(n_streams):
        client = f"bank {s + 1}"
        stats = []
        for i in np.random.default_rng(seed + s).permutation(len(feats))[:n_queries]:
            monitor.observe(client, feats[i], int(labels[i]))
            stats.append(monitor.statistic(client))
        stats = [v for v in stats if v is not None]
        flags.append(monitor.flagged(client))
        worst.append(max(stats) if monitor.test == "reference" else min(stats))
    return flags, worst


# ---------------------------------------------------------------------------------------------
# Output hardening
# ---------------------------------------------------------------------------------------------

def harden(proba: np.ndarray, classes, mode: str = "probabilities", digits: int = 1, noise: float = 0.0,
           rng: np.random.Generator | None = None) -> list[dict]:
    """Response dicts for each row of probabilities. The label is always the model's own argmax;
    noise (Gaussian, std `noise`, renormalised) and rounding change only what else is revealed."""
    proba = np.asarray(proba, float)
    labels = proba.argmax(1)
    shown = proba
    if noise > 0:
        rng = rng or np.random.default_rng()
        shown = np.clip(proba + rng.normal(0, noise, proba.shape), 1e-6, None)
        shown = shown / shown.sum(1, keepdims=True)
    out = []
    for i, label in enumerate(labels):
        item = {"label": classes[label], "label_id": int(label)}
        if mode == "probabilities":
            item["probabilities"] = {c: float(p) for c, p in zip(classes, shown[i])}
        elif mode == "rounded":
            item["probabilities"] = {c: round(float(p), digits) for c, p in zip(classes, shown[i])}
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# Audit log
# ---------------------------------------------------------------------------------------------

class AuditLog:
    """Append-only JSON lines. Each record carries `prev`, the sha256 of the line before it, so
    deleting or editing a line breaks the chain. The chain alone proves nothing about its END:
    truncating the log, emptying it or rewriting every line still "verifies". So the number of
    lines and the hash of the last one (the head) are kept apart, in an anchor file (default
    `<log>.anchor`; put it on another volume or ship it off the machine), signed with an HMAC
    whose key is held outside the log (`key`; a random one per process when not given).
    `AuditLog.verify(path, key)` checks the chain, the anchor's signature, and that the log ends
    exactly where the anchor says. Writers (threads or processes) take an exclusive fcntl lock on
    the log and read the head from the anchor, so several writers keep one honest chain.

    Records hold the client name, never its key; inputs are stored as a sha256 digest, not in clear."""

    GENESIS = "0" * 64

    def __init__(self, path, key: bytes | str | None = None, anchor_path=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.anchor_path = Path(anchor_path) if anchor_path else self.default_anchor(self.path)
        self.key = key.encode("utf-8") if isinstance(key, str) else (key or secrets.token_bytes(32))
        self._lock = threading.Lock()
        with self._locked():
            if self._read_anchor() is None and self.path.exists() and self.path.stat().st_size:
                raise ValueError(f"{self.path} already holds records but has no anchor at {self.anchor_path}: "
                                 "verify and archive the old log, or pass its anchor_path.")

    @staticmethod
    def default_anchor(path) -> Path:
        path = Path(path)
        return path.with_name(path.name + ".anchor")

    @staticmethod
    def _sign(key: bytes, count: int, head: str) -> str:
        return hmac.new(key, f"labkit-audit:{count}:{head}".encode(), hashlib.sha256).hexdigest()

    def _read_anchor(self) -> dict | None:
        try:
            return json.loads(self.anchor_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def _locked(self):
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def lock():
            with self._lock, open(self.path, "ab") as f:  # threads of this process, then other processes
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    yield f
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return lock()

    def write(self, **record) -> None:
        with self._locked() as f:
            anchor = self._read_anchor() or {"count": 0, "head": self.GENESIS}
            count, prev = int(anchor["count"]), str(anchor["head"])
            line = json.dumps({"ts": round(time.time(), 6), **record, "prev": prev}, sort_keys=True,
                              default=str).encode("utf-8")
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
            head = hashlib.sha256(line).hexdigest()
            tmp = self.anchor_path.with_name(self.anchor_path.name + ".tmp")
            tmp.write_text(json.dumps({"count": count + 1, "head": head,
                                       "hmac": self._sign(self.key, count + 1, head)}), encoding="utf-8")
            os.replace(tmp, self.anchor_path)  # atomic: a reader sees the old anchor or the new one

    @staticmethod
    def read(path) -> list[dict]:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

    @classmethod
    def verify(cls, path, key: bytes | str | None = None, anchor_path=None) -> tuple[bool, int, str]:
        """(intact, lines checked, sentence). Walks the hash chain from the first line; with `key`,
        also checks that the anchor is signed with it and that the log ends where the anchor says
        (without the key only the chain is checked, which a rewrite of the whole log passes)."""
        prev = cls.GENESIS
        path = Path(path)
        lines = path.read_bytes().splitlines() if path.exists() else []
        for number, raw in enumerate(lines, start=1):
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                return False, number, f"line {number} is not JSON: the log was edited"
            if not isinstance(record, dict) or record.get("prev") != prev:
                return False, number, f"line {number} does not follow line {number - 1}: a line was removed or edited"
            prev = hashlib.sha256(raw).hexdigest()
        if key is None:
            return True, len(lines), (f"all {len(lines)} lines chain correctly (chain only: pass the key to check "
                                      "the anchor; without it a truncated or rewritten log cannot be detected)")
        key = key.encode("utf-8") if isinstance(key, str) else key
        anchor_file = Path(anchor_path) if anchor_path else cls.default_anchor(path)
        try:
            anchor = json.loads(anchor_file.read_text(encoding="utf-8"))
            count, head, mac = int(anchor["count"]), str(anchor["head"]), str(anchor["hmac"])
        except FileNotFoundError:
            return False, len(lines), f"no anchor at {anchor_file}: the log's end cannot be checked"
        except (ValueError, KeyError, TypeError):
            return False, len(lines), f"the anchor {anchor_file.name} is malformed: it was edited"
        if not hmac.compare_digest(mac, cls._sign(key, count, head)):
            return False, len(lines), "the anchor's signature does not match this key: the anchor was forged or edited"
        if len(lines) != count or prev != head:
            what = ("lines were removed from the end" if len(lines) < count else
                    "lines were added after the last signed one" if len(lines) > count else "the log was rewritten")
            return False, len(lines), (f"the log has {len(lines)} lines ending in {prev[:12]}..., the signed anchor "
                                       f"says {count} ending in {head[:12]}...: {what}")
        return True, len(lines), f"all {len(lines)} lines chain correctly and end where the signed anchor says"
