"""Checks for the API-hardening lab (07): API keys compared in constant time, a sliding-window rate limit."""
from __future__ import annotations

import hashlib
from collections import deque
from typing import Callable

from .common import Feedback, call, fail


def _serving_references():
    from ..serving import layers

    return [(layers.KeyStore.identify, "labkit.serving.KeyStore.identify"),
            (layers.sliding_window_allow, "labkit.serving.sliding_window_allow")]


class _Digest(str):
    """A stored digest that notes every `==` it takes part in (a dict lookup compares keys with
    == too), so the check sees how the learner compared, whatever the source says."""

    equals = 0

    def __eq__(self, other):
        _Digest.equals += 1
        return str.__eq__(self, other)

    def __ne__(self, other):
        _Digest.equals += 1
        return str.__ne__(self, other)

    __hash__ = str.__hash__


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_lookup(fn: Callable) -> Feedback:
    """fn(presented, digests) -> client name or None, where digests maps sha256 hex digests of
    issued keys to client names. It must hash the presented key, compare whole digests with
    hmac.compare_digest (no ==, no dict lookup: their time depends on how many leading characters
    match), and refuse missing keys. Judged by behaviour: the stored digests note every ==, the
    profiler sees compare_digest run, and planted digests that differ from a forged key's digest
    only in the last (or first) character must not match."""
    exercise = "api_key_lookup"
    expected = "lookup_key(presented, digests)"
    keys = {"bank_a": "lk_" + "a1" * 16, "bank_b": "lk_" + "b2" * 16, "bank_c": "lk_" + "c3" * 16}

    def store(extra: dict | None = None) -> dict:
        found = {_Digest(_sha(k)): name for name, k in keys.items()}
        found.update({_Digest(d): name for d, name in (extra or {}).items()})
        return found

    def run(presented, digests):
        from .common import watch_for

        watch = watch_for(())
        with watch:
            out = call(exercise, fn, (presented, digests), expected, _serving_references())
        return out, watch

    _Digest.equals = 0
    saw_compare_digest = False
    for name, key in keys.items():
        got, watch = run(key, store())
        saw_compare_digest |= bool(watch.c_calls & {"compare_digest", "_compare_digest"})
        if got != name:
            if got is None and run(_sha(key), store())[0] == name:
                fail(exercise, "a valid key was refused, but its digest was accepted: hash the presented key "
                     "(hashlib.sha256(key.encode()).hexdigest()) before comparing it with the stored digests.")
            fail(exercise, f"the key of {name} returned {got!r}; expected {name!r}. Hash the presented key and "
                 "look for a stored digest equal to it.")
    used_equals = _Digest.equals
    for digest, name in store().items():
        if run(str(digest), store())[0] is not None:
            fail(exercise, "presenting a stored DIGEST was accepted as if it were a key: compare the digest of "
                 "the presented key, never the presented string itself, with the stored digests.")
    forged = keys["bank_a"][:-1] + "X"
    if run(forged, store())[0] is not None:
        fail(exercise, "a forged key (one character changed) was accepted; return None when no digest matches.")
    # Digests planted to differ from a forged key's digest in one character only: a comparison
    # that reads part of the digest (a prefix, a suffix) takes them for a match.
    probe = "lk_" + "d4" * 16
    d = _sha(probe)
    flip = {c: ("0" if c != "0" else "1") for c in "0123456789abcdef"}
    for where, planted in (("last", d[:-1] + flip[d[-1]]), ("first", flip[d[0]] + d[1:])):
        if run(probe, store({planted: "mallory"}))[0] == "mallory":
            fail(exercise, f"a key whose digest differs from a stored digest only in its {where} character was "
                 "accepted: compare the whole digest (all 64 hex characters) with hmac.compare_digest(stored, "
                 "digest), never a slice of it.")
    for missing in (None, ""):
        try:
            got = fn(missing, store())
        except Exception as err:  # noqa: BLE001 - reported to the learner
            fail(exercise, f"a missing key ({missing!r}) raised {type(err).__name__}; return None instead so the "
                 "API can answer 401.", err)
        if got is not None:
            fail(exercise, f"a missing key ({missing!r}) returned {got!r}; return None.")
    if used_equals:
        fail(exercise, "the digests are compared with == (or looked up in the dict), which stops at the first "
             "character that differs, so the time taken tells an attacker how much of a forged digest was "
             "right: compare each stored digest with hmac.compare_digest(stored, digest).")
    if not saw_compare_digest:
        fail(exercise, "hmac.compare_digest never ran while your function looked up a valid key: compare each "
             "stored digest with hmac.compare_digest(stored, digest), whose time does not depend on where the "
             "strings differ.")
    return Feedback(exercise, True, "finds the right client for every key, refuses forged, missing and digest-as-key "
                    "inputs, compares whole digests, and uses hmac.compare_digest rather than ==.").show()


def sliding_window(fn: Callable) -> Feedback:
    """fn(log, now, limit, window_s) -> (allowed, retry_after): a sliding-window rate-limit decision
    for one client whose accepted query times are in the deque `log`. A time t has left the
    window at `now` when t <= now - window_s (so a query at exactly t + window_s is allowed)."""
    exercise = "sliding_window"
    expected = "allow(log, now, limit, window_s)"

    def run(log, now, limit=3, window=10.0):
        out = call(exercise, fn, (log, now, limit, window), expected, _serving_references())
        if not (isinstance(out, tuple) and len(out) == 2):
            fail(exercise, f"returned {out!r} (log {list(log)}, now {now}); return a pair (allowed, retry_after).")
        return bool(out[0]), float(out[1])

    log = deque()
    results = [run(log, t) for t in (0.0, 1.0, 2.0)]
    if not all(ok for ok, _ in results):
        fail(exercise, "refused one of the first 3 queries with limit 3: accept while fewer than `limit` "
             "queries are in the window.")
    if list(log) != [0.0, 1.0, 2.0]:
        fail(exercise, f"after three accepted queries the log holds {list(log)}; append `now` for each accepted "
             "query (and nothing else).")
    ok, retry = run(log, 3.0)
    if ok:
        fail(exercise, "a 4th query inside the window was accepted with limit 3: an off-by-one; accept only while "
             "len(log) < limit.")
    if len(log) != 3:
        fail(exercise, "a refused query was written to the log: only accepted queries count, otherwise a client "
             "that keeps retrying is locked out for ever.")
    if abs(retry - 7.0) > 1e-6:
        hint = (" You counted from the newest query; the window frees up when the OLDEST one leaves it."
                if abs(retry - 9.0) < 1e-6 else "")
        fail(exercise, f"retry_after was {retry:g} s at t = 3 (queries at 0, 1, 2; window 10 s); expected 7 s, when "
             f"the query at t = 0 leaves the window.{hint}")
    # A fixed window resets its count at multiples of window_s: 3 queries late in one window and
    # a 4th early in the next all fall inside 10 seconds.
    burst = deque()
    for t in (8.0, 9.0, 9.5):
        run(burst, t)
    if run(burst, 10.5)[0]:
        fail(exercise, "queries at t = 8, 9 and 9.5 and a 4th at t = 10.5 all fall within 10 s, yet the 4th was "
             "accepted: this is a fixed window that resets at multiples of window_s, which lets a client send twice "
             "the limit around each boundary. Keep the times of accepted queries and count those within the last "
             "window_s seconds of now.")
    before = deque(log)
    ok, _ = run(log, 10.0)
    if not ok:
        if run(deque(before), 10.5)[0]:
            fail(exercise, "at t = 10, exactly the 7 s retry_after promised, the query was refused: the query from "
                 "t = 0 is then window_s old and has left the window. Drop times with t <= now - window_s "
                 "(<=, not <).")
        fail(exercise, "at t = 10.5 the query from t = 0 is older than the 10 s window and must no longer count: "
             "drop times <= now - window from the left of the log before counting.")
    if list(log) != [1.0, 2.0, 10.0]:
        fail(exercise, f"after the query at t = 10 the log should hold [1.0, 2.0, 10.0] (only the query at t = 0 has "
             f"left the window); yours holds {list(log)}.")
    quiet = deque([0.0, 1.0, 2.0])
    ok, _ = run(quiet, 100.0)
    if not ok:
        fail(exercise, "a client silent for 100 s was refused: drop every time <= now - window from the left of the "
             "log before counting.")
    if list(quiet) != [100.0]:
        fail(exercise, f"after a query at t = 100 the log still holds {list(quiet)}: all three earlier times had "
             "expired, but only one was removed. Remove expired times in a loop (while log and log[0] <= now - "
             "window_s: log.popleft()), not with a single if.")
    return Feedback(exercise, True, "counts only accepted queries inside the sliding window (a time leaves it "
                    "exactly window_s later), removes every expired time, refuses the one over the limit, and "
                    "says when the oldest query frees a slot.").show()
