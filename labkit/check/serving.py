"""Checks for the API-hardening lab (07): API keys compared in constant time, a sliding-window rate limit."""
from __future__ import annotations

from typing import Callable

from .common import Feedback, fail


def api_key_lookup(fn: Callable) -> Feedback:
    """fn(presented, digests) -> client name or None, where digests maps sha256 hex digests of
    issued keys to client names. It must hash the presented key and compare digests with
    hmac.compare_digest, and refuse missing keys."""
    import hashlib
    import hmac
    import inspect

    exercise = "api_key_lookup"
    keys = {"bank_a": "lk_" + "a1" * 16, "bank_b": "lk_" + "b2" * 16, "bank_c": "lk_" + "c3" * 16}
    digests = {hashlib.sha256(k.encode()).hexdigest(): name for name, k in keys.items()}
    real = hmac.compare_digest
    calls = []

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    hmac.compare_digest = counting
    try:
        for name, key in keys.items():
            try:
                got = fn(key, dict(digests))
            except Exception as err:  # noqa: BLE001 - reported to the learner
                fail(exercise, f"raised {type(err).__name__}: {err} for a valid key.", err)
            if got != name:
                if got is None and fn(hashlib.sha256(key.encode()).hexdigest(), dict(digests)) == name:
                    fail(exercise, "a valid key was refused, but its digest was accepted: hash the presented key "
                          "(hashlib.sha256(key.encode()).hexdigest()) before comparing it with the stored digests.")
                fail(exercise, f"the key of {name} returned {got!r}; expected {name!r}. Hash the presented key and "
                      "look for a stored digest equal to it.")
        for digest, name in digests.items():
            if fn(digest, dict(digests)) is not None:
                fail(exercise, "presenting a stored DIGEST was accepted as if it were a key: compare the digest of "
                      "the presented key, never the presented string itself, with the stored digests.")
        forged = keys["bank_a"][:-1] + "X"
        if fn(forged, dict(digests)) is not None:
            fail(exercise, "a forged key (one character changed) was accepted; return None when no digest matches.")
        for missing in (None, ""):
            try:
                got = fn(missing, dict(digests))
            except Exception as err:  # noqa: BLE001
                fail(exercise, f"a missing key ({missing!r}) raised {type(err).__name__}; return None instead so the "
                      "API can answer 401.", err)
            if got is not None:
                fail(exercise, f"a missing key ({missing!r}) returned {got!r}; return None.")
    finally:
        hmac.compare_digest = real
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = ""
    if not calls and "compare_digest" not in source:
        fail(exercise, "the digests are compared with == (or a dict lookup), whose time depends on how many leading "
              "characters match; compare them with hmac.compare_digest.")
    return Feedback(exercise, True, "finds the right client for every key, refuses forged, missing and digest-as-key "
                    "inputs, and compares in constant time.").show()


def sliding_window(fn: Callable) -> Feedback:
    """fn(log, now, limit, window_s) -> (allowed, retry_after): a sliding-window rate-limit decision
    for one client whose accepted query times are in the deque `log`."""
    from collections import deque

    exercise = "sliding_window"

    def run(log, now, limit=3, window=10.0):
        try:
            out = fn(log, now, limit, window)
        except Exception as err:  # noqa: BLE001
            fail(exercise, f"raised {type(err).__name__}: {err} (log {list(log)}, now {now}).", err)
        if not (isinstance(out, tuple) and len(out) == 2):
            fail(exercise, f"returned {out!r}; return a pair (allowed, retry_after).")
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
    ok, _ = run(log, 10.5)
    if not ok:
        fail(exercise, "at t = 10.5 the query from t = 0 is older than the 10 s window and must no longer count: "
              "drop times <= now - window from the left of the log before counting.")
    if list(log)[0] != 1.0:
        fail(exercise, f"the log at t = 10.5 is {list(log)}; expired times should have been removed.")
    ok, _ = run(deque([0.0, 1.0, 2.0]), 100.0)
    if not ok:
        fail(exercise, "a client silent for 100 s was refused: remove every expired time, not just one.")
    return Feedback(exercise, True, "counts only accepted queries inside the window, refuses the one over the limit, "
                    "and says when the oldest query frees a slot.").show()
