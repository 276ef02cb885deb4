"""Red-team attacks against a running credit-scoring API (lab 07), each returning an AttackResult.

Every attack talks HTTP to `api.url` like an outside client would; `blocked` says whether the
attack failed to reach its goal in the lab's time window, `detail` says what happened.

    no_key, forged_key        spoofing: call without a key / with an invented one
    flood                     denial of service: a burst of requests from one key
    fuzz                      malformed and extreme payloads (FUZZ_CASES)
    ood_probe                 schema-valid rows unlike any real client
    evasion                   greedy search for the smallest change that flips "default" to "repaid"
    extraction                synthetic queries from a few owned rows, then a surrogate model
    load                      a timed mixed load (clients, flood, fuzzing, half-sent bodies, idle sockets)
                              on 127.0.0.1, meant to run as a separate process (`python -m ... load`)
"""
from __future__ import annotations

import json
import secrets
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np


@dataclass
class AttackResult:
    attack: str
    blocked: bool
    detail: str
    queries: int = 0
    codes: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)


def _client(api, key):
    headers = {"X-API-Key": key} if key else {}
    return httpx.Client(base_url=api.url, headers=headers, timeout=30)


def no_key(api, row) -> AttackResult:
    with _client(api, None) as http:
        r = http.post("/predict", json={"features": row})
    return AttackResult("no key", r.status_code == 401, f"HTTP {r.status_code}", 1, Counter([r.status_code]))


def forged_key(api, row) -> AttackResult:
    with _client(api, "lk_" + secrets.token_urlsafe(24)) as http:
        r = http.post("/predict", json={"features": row})
    return AttackResult("forged key", r.status_code in (401, 403), f"HTTP {r.status_code}", 1, Counter([r.status_code]))


def flood(api, key, rows, n: int) -> AttackResult:
    codes = Counter()
    with _client(api, key) as http:
        for i in range(n):
            codes[http.post("/predict", json={"features": rows[i % len(rows)]}).status_code] += 1
    blocked = codes[429] > 0
    return AttackResult("flood", blocked, f"{codes[200]} of {n} answered, {codes[429]} refused with 429", n, codes)


def fuzz_cases(row: dict) -> list[tuple[str, bytes]]:
    """(name, body) pairs: broken JSON, wrong types, NaN / infinity, extreme and negative values,
    missing and extra fields, deep nesting, a huge body."""
    def with_(**changes):
        return json.dumps({"features": {**row, **changes}}).encode()

    missing = {k: v for k, v in row.items() if k != "AGE"}
    return [
        ("empty body", b""), ("broken JSON", b'{"features": {'), ("JSON null", b"null"), ("a list", b"[1, 2, 3]"),
        ("features null", b'{"features": null}'), ("string number", with_(LIMIT_BAL="50000")),
        ("NaN", with_(LIMIT_BAL=float("nan"))), ("infinity", with_(BILL_AMT1=float("inf"))),
        ("huge number", with_(LIMIT_BAL=1e308)), ("negative limit", with_(LIMIT_BAL=-1e9)),
        ("age 500", with_(AGE=500)), ("code out of range", with_(EDUCATION=99)), ("boolean", with_(SEX=True)),
        ("fraction for a code", with_(PAY_0=0.5)), ("missing field", json.dumps({"features": missing}).encode()),
        ("extra field", with_(is_admin=True)), ("deep nesting", b'{"features": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
        ("huge body", with_(note="x" * 50_000)), ("not UTF-8", b"\xff\xfe\xfd"),
        ("text where numbers go", with_(AGE="'; DROP TABLE clients; --")),
    ]


def fuzz(api, key, row) -> AttackResult:
    """Blocked when every case gets a 4xx JSON error: no crash (5xx) and no garbage scored (200)."""
    codes, accepted, crashed = Counter(), [], []
    with _client(api, key) as http:
        for name, body in fuzz_cases(row):
            r = http.post("/predict", content=body, headers={"Content-Type": "application/json"})
            codes[r.status_code] += 1
            if r.status_code == 200:
                accepted.append(name)
            elif r.status_code >= 500:
                crashed.append(name)
    n = sum(codes.values())
    detail = f"{n - len(accepted) - len(crashed)} of {n} refused with 4xx; {len(crashed)} crashed the server (5xx)"
    if accepted:
        detail += f"; scored: {', '.join(accepted[:4])}{'...' if len(accepted) > 4 else ''}"
    return AttackResult("fuzzing", not accepted and not crashed, detail, n, codes,
                        {"accepted": accepted, "crashed": crashed})


def ood_probe(api, key, strange_rows: list[dict]) -> AttackResult:
    codes = Counter()
    with _client(api, key) as http:
        for row in strange_rows:
            codes[http.post("/predict", json={"features": row}).status_code] += 1
    refused = sum(n for c, n in codes.items() if c != 200)
    return AttackResult("OOD probes", refused >= 0.9 * len(strange_rows),
                        f"{refused} of {len(strange_rows)} strange rows refused", len(strange_rows), codes)


def _batch(http, rows):
    r = http.post("/predict/batch", json={"instances": [{"features": row} for row in rows]})
    if r.status_code != 200:
        return None, r
    return r.json()["predictions"], r


def _p_default(pred) -> float | None:
    probs = pred.get("probabilities")
    return None if probs is None else float(probs["default"])


def evasion(api, key, row: dict, ranges, max_rounds: int = 12) -> AttackResult:
    """Greedy score-based search: each round queries every one-feature step (+/- 5% of the feature's
    range, +/-1 for codes) as one batch and keeps the step that lowers P(default) most, until the
    label flips. Needs scores: with label-only answers it has nothing to climb."""
    current = dict(row)
    queries, codes = 0, Counter()
    with _client(api, key) as http:
        preds, r = _batch(http, [current])
        queries += 1
        codes[r.status_code] += 1
        if preds is None:
            return AttackResult("evasion", True, f"refused at once (HTTP {r.status_code})", queries, codes)
        if preds[0]["label_id"] == 0:
            return AttackResult("evasion", False, "already approved", queries, codes)
        for round_ in range(1, max_rounds + 1):
            candidates = []
            for rng in ranges:
                step = 1 if rng.integer else 0.05 * (rng.high - rng.low)
                for sign in (-1, 1):
                    value = current[rng.name] + sign * step
                    if rng.low <= value <= rng.high:
                        candidates.append({**current, rng.name: int(value) if rng.integer else float(value)})
            preds, r = _batch(http, candidates)
            queries += len(candidates)
            codes[r.status_code] += 1
            if preds is None:
                why = r.json().get("error", r.status_code)
                return AttackResult("evasion", True, f"stopped after {queries} queries: {why}", queries, codes)
            flipped = [i for i, p in enumerate(preds) if p["label_id"] == 0]
            scores = [_p_default(p) for p in preds]
            if flipped:
                current = candidates[flipped[0]]
                changed = {k: (row[k], current[k]) for k in row if current[k] != row[k]}
                return AttackResult("evasion", False, f"decision flipped after {queries} queries by changing "
                                    f"{len(changed)} feature(s)", queries, codes, {"changed": changed})
            if any(s is None for s in scores):
                return AttackResult("evasion", True, f"no scores to climb (label-only answers); gave up after "
                                    f"{queries} queries", queries, codes)
            best = int(np.argmin(scores))
            current = candidates[best]
    return AttackResult("evasion", True, f"no flip within {max_rounds} rounds ({queries} queries)", queries, codes)


def synthesise(seed_rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    """Synthetic queries from a few owned rows: every feature copied from a random seed row."""
    rng = np.random.default_rng(seed)
    names = list(seed_rows[0])
    return [{k: seed_rows[rng.integers(len(seed_rows))][k] for k in names} for _ in range(n)]


def balanced_agreement(predicted, target) -> float:
    """Fidelity that a constant guess cannot fake: agreement with the target, averaged over the
    target's classes (a surrogate that always says "repaid" scores 50%, not 80%)."""
    predicted, target = np.asarray(predicted), np.asarray(target)
    return float(np.mean([(predicted[target == c] == c).mean() for c in np.unique(target)]))


def extraction(api, key, seed_rows: list[dict], budget: int, eval_matrix, target_labels, to_matrix,
               batch: int = 50, seed: int = 0, fidelity_goal: float = 0.9) -> AttackResult:
    """Query `budget` synthetic rows in batches, train a surrogate MLP on the answered labels, and
    measure fidelity (agreement with the target) on held-out rows. Blocked when the key is refused
    before the budget is spent or the surrogate misses `fidelity_goal`."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    queries = synthesise(seed_rows, budget, seed)
    X, y, codes, stopped = [], [], Counter(), None
    with _client(api, key) as http:
        for start in range(0, budget, batch):
            chunk = queries[start:start + batch]
            preds, r = _batch(http, chunk)
            codes[r.status_code] += 1
            if preds is None:
                stopped = f"refused after {len(y)} answered queries ({r.json().get('error', r.status_code)})"
                break
            X += chunk
            y += [p["label_id"] for p in preds]
    fidelity, surrogate = float("nan"), None
    if len(set(y)) == 2 and len(y) >= 50:
        signed_log = FunctionTransformer(lambda m: np.sign(m) * np.log1p(np.abs(m)))  # amounts span 6 decades
        surrogate = make_pipeline(signed_log, StandardScaler(),
                                  MLPClassifier((32,), max_iter=150, random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            surrogate.fit(to_matrix(X), y)
        fidelity = balanced_agreement(surrogate.predict(eval_matrix), target_labels)
    ok = stopped is None and fidelity >= fidelity_goal
    detail = stopped or f"{len(y)} queries answered"
    detail += (f"; surrogate fidelity {fidelity:.1%} on held-out clients (balanced)" if fidelity == fidelity
               else "; too few answers to train a surrogate")
    return AttackResult("extraction", not ok, detail, len(y), codes,
                        {"fidelity": fidelity, "answered": len(y), "surrogate": surrogate if len(y) >= 50 and
                         len(set(y)) == 2 else None})


# ---------------------------------------------------------------------------------------------
# Load from a separate process: `python -m labkit.serving.redteam load < plan.json`
# ---------------------------------------------------------------------------------------------

def load(plan: dict) -> dict:
    """Drive a running API on 127.0.0.1 for `plan["duration_s"]` seconds with the plan's workers, each
    a thread of THIS process (run it as a separate process, so the load does not share the server's
    interpreter). A worker: {"name", "key" (or null), "requests": [{"path", "body" (text) or
    "json", "content_type", "headers", "expect" (error kind or null)}], "max" (requests),
    "pace_s", "threads", "raw": "half_body" | "idle" (socket tricks instead of HTTP requests)}.
    Returns requests, elapsed_s, p50/p99 client latency (ms), status counts overall and per worker,
    and the first problems seen (5xx, a non-JSON error, an error without its kind, a wrong kind)."""
    import socket
    import threading
    import time
    from urllib.parse import urlparse

    url = urlparse(plan["url"])
    if url.hostname != "127.0.0.1":  # a load generator that can only hit this machine
        raise SystemExit(f"refusing to send load to {url.hostname}: only 127.0.0.1 is allowed")
    stop_at = time.monotonic() + float(plan.get("duration_s", 3.0))
    lock, records, problems = threading.Lock(), [], []

    def note(worker, status, ms, problem=None):
        with lock:
            records.append((worker, status, ms))
            if problem and len(problems) < 20:
                problems.append(f"{worker}: {problem}")

    def http_worker(w, offset):
        headers = {"X-API-Key": w["key"]} if w.get("key") else {}
        with httpx.Client(base_url=plan["url"], headers=headers, timeout=10) as http:
            n = 0
            while time.monotonic() < stop_at and n < w.get("max", 10**9):
                req = w["requests"][(offset + n) % len(w["requests"])]
                h = dict(req.get("headers") or {})
                h.setdefault("Content-Type", req.get("content_type", "application/json"))
                content = req["body"].encode("utf-8", "surrogateescape") if "body" in req else json.dumps(req["json"])
                started = time.perf_counter()
                try:
                    r = http.post(req.get("path", "/predict"), content=content, headers=h)
                except httpx.HTTPError as err:
                    note(w["name"], "transport_error", (time.perf_counter() - started) * 1000, repr(err))
                    n += 1
                    continue
                ms = (time.perf_counter() - started) * 1000
                problem = None
                try:
                    body = r.json()
                except ValueError:
                    body, problem = {}, f"non-JSON answer {r.status_code} {r.text[:60]!r}"
                if r.status_code >= 500:
                    problem = f"server error {r.status_code} {body}"
                elif r.status_code >= 400 and "error" not in body:
                    problem = problem or f"error without its kind: {r.status_code} {body}"
                elif req.get("expect") and body.get("error") != req["expect"]:
                    problem = f"expected {req['expect']}, got {r.status_code} {body.get('error')}"
                note(w["name"], r.status_code, ms, problem)
                n += 1
                if w.get("pace_s"):
                    time.sleep(w["pace_s"])

    def raw_worker(w, offset):
        n = 0
        while time.monotonic() < stop_at and n < w.get("max", 10**9):
            started = time.perf_counter()
            sock = socket.create_connection((url.hostname, url.port), timeout=5)
            if w["raw"] == "half_body":  # promise 1,000 bytes, send 10, leave
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n" + (f"X-API-Key: {w['key']}\r\n".encode() if w.get("key")
                                                             else b"") + b"\r\n" + b'{"features"')
            else:  # idle: open and say nothing for a while
                time.sleep(w.get("hold_s", 0.5))
            sock.close()
            note(w["name"], w["raw"], (time.perf_counter() - started) * 1000)
            n += 1
            time.sleep(w.get("pace_s", 0.05))

    threads = []
    for w in plan["workers"]:
        for k in range(w.get("threads", 1)):
            target = raw_worker if w.get("raw") else http_worker
            threads.append(threading.Thread(target=target, args=(w, 997 * k), daemon=True))
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join(float(plan.get("duration_s", 3.0)) + 30) for t in threads]
    elapsed = time.perf_counter() - t0
    http_ms = np.array([ms for _, status, ms in records if isinstance(status, int)])
    counts, per_worker = Counter(), {}
    for worker, status, _ in records:
        counts[str(status)] += 1
        per_worker.setdefault(worker, Counter())[str(status)] += 1
    return {"requests": len(http_ms), "raw_connections": len(records) - len(http_ms), "elapsed_s": elapsed,
            "p50_ms": float(np.percentile(http_ms, 50)) if len(http_ms) else float("nan"),
            "p99_ms": float(np.percentile(http_ms, 99)) if len(http_ms) else float("nan"),
            "status_counts": dict(counts), "per_worker": {k: dict(v) for k, v in per_worker.items()},
            "problems": problems, "threads_left": sum(t.is_alive() for t in threads)}


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["load"]:
        raise SystemExit("usage: python -m labkit.serving.redteam load < plan.json  (prints the figures as JSON)")
    print(json.dumps(load(json.load(sys.stdin))))
