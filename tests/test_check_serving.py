"""labkit.check.api_key_lookup and check.sliding_window: judged by behaviour, each typical mistake named."""
import hashlib
import hmac
import secrets
from hmac import compare_digest as imported_compare_digest

import pytest

from labkit import check
from labkit.check.common import TODO_MESSAGE


def lookup_good(presented, digests):
    if not presented:
        return None
    digest = hashlib.sha256(presented.encode("utf-8")).hexdigest()
    found = None
    for stored, client in digests.items():
        if hmac.compare_digest(stored, digest):
            found = client
    return found


def lookup_imported(presented, digests):
    if not presented:
        return None
    digest = hashlib.sha256(presented.encode()).hexdigest()
    return next((c for d, c in digests.items() if imported_compare_digest(d, digest)), None)


def lookup_secrets(presented, digests):
    if not presented:
        return None
    digest = hashlib.sha256(presented.encode()).hexdigest().encode()
    return next((c for d, c in digests.items() if secrets.compare_digest(d.encode(), digest)), None)


def lookup_equals_with_comment(presented, digests):
    # compared with hmac.compare_digest (this comment used to be enough to pass)
    if not presented:
        return None
    digest = hashlib.sha256(presented.encode()).hexdigest()
    return next((c for d, c in digests.items() if d == digest), None)


def lookup_dict(presented, digests):
    if not presented:
        return None
    return digests.get(hashlib.sha256(presented.encode()).hexdigest())


def lookup_prefix(presented, digests):
    if not presented:
        return None
    digest = hashlib.sha256(presented.encode()).hexdigest()
    return next((c for d, c in digests.items() if hmac.compare_digest(d[:16], digest[:16])), None)


def lookup_suffix(presented, digests):
    if not presented:
        return None
    digest = hashlib.sha256(presented.encode()).hexdigest()
    return next((c for d, c in digests.items() if hmac.compare_digest(d[-16:], digest[-16:])), None)


def lookup_str_copy(presented, digests):
    if not presented:
        return None
    digest = hashlib.sha256(presented.encode()).hexdigest()
    return next((c for d, c in digests.items() if str(d) + "" == digest), None)


def lookup_no_hash(presented, digests):
    return next((c for d, c in digests.items() if presented and hmac.compare_digest(d, presented)), None)


def lookup_crashes_on_none(presented, digests):
    return lookup_good(presented.strip(), digests)


def lookup_todo(presented, digests):
    raise NotImplementedError("TODO")


def lookup_reference(presented, digests):
    from labkit.serving import KeyStore

    store = KeyStore()
    store._digests = dict(digests)
    return store.identify(presented)


@pytest.mark.parametrize("fn", [lookup_good, lookup_imported, lookup_secrets])
def test_api_key_lookup_accepts_constant_time_answers(fn):
    assert check.api_key_lookup(fn).passed


@pytest.mark.parametrize("fn, words", [
    (lookup_equals_with_comment, "compared with =="),
    (lookup_dict, "looked up in the dict"),
    (lookup_prefix, "only in its last character"),
    (lookup_suffix, "only in its first character"),
    (lookup_str_copy, "hmac.compare_digest never ran"),
    (lookup_no_hash, "hash the presented key"),
    (lookup_crashes_on_none, r"a missing key \(None\) raised AttributeError"),
    (lookup_todo, "still TODO"),
    (lookup_reference, "kit's own answer"),
    (lambda presented: None, "signature"),
])
def test_api_key_lookup_names_each_mistake(fn, words):
    with pytest.raises(check.ExerciseFailed, match=words):
        check.api_key_lookup(fn)


def allow_good(log, now, limit, window_s):
    while log and log[0] <= now - window_s:
        log.popleft()
    if len(log) < limit:
        log.append(now)
        return True, 0.0
    return False, log[0] + window_s - now


def allow_if(log, now, limit, window_s):
    if log and log[0] <= now - window_s:
        log.popleft()
    if len(log) < limit:
        log.append(now)
        return True, 0.0
    return False, log[0] + window_s - now


def allow_strict_boundary(log, now, limit, window_s):
    while log and log[0] < now - window_s:
        log.popleft()
    if len(log) < limit:
        log.append(now)
        return True, 0.0
    return False, log[0] + window_s - now


def allow_fixed_window(log, now, limit, window_s):
    start = now - now % window_s
    while log and log[0] < start:
        log.popleft()
    if len(log) < limit:
        log.append(now)
        return True, 0.0
    return False, start + window_s - now


def allow_off_by_one(log, now, limit, window_s):
    while log and log[0] <= now - window_s:
        log.popleft()
    if len(log) <= limit:
        log.append(now)
        return True, 0.0
    return False, log[0] + window_s - now


def allow_records_refusals(log, now, limit, window_s):
    ok = allow_good(log, now, limit, window_s)
    if not ok[0]:
        log.append(now)
    return ok


def allow_newest(log, now, limit, window_s):
    while log and log[0] <= now - window_s:
        log.popleft()
    if len(log) < limit:
        log.append(now)
        return True, 0.0
    return False, log[-1] + window_s - now


def allow_never_expires(log, now, limit, window_s):
    if len(log) < limit:
        log.append(now)
        return True, 0.0
    return False, log[0] + window_s - now


def allow_reference(log, now, limit, window_s):
    from labkit.serving import sliding_window_allow

    return sliding_window_allow(log, now, limit, window_s)


def test_sliding_window_accepts_a_correct_answer():
    assert check.sliding_window(allow_good).passed


@pytest.mark.parametrize("fn, words", [
    (allow_if, "not with a single if"),
    (allow_strict_boundary, r"<=, not <"),
    (allow_fixed_window, "fixed window"),
    (allow_off_by_one, "off-by-one"),
    (allow_records_refusals, "refused query was written"),
    (allow_newest, "OLDEST"),
    (allow_never_expires, "drop times"),
    (allow_reference, "kit's own answer"),
    (lambda log, now, limit, window_s: True, "return a pair"),
])
def test_sliding_window_names_each_mistake(fn, words):
    with pytest.raises(check.ExerciseFailed, match=words) as info:
        check.sliding_window(fn)
    assert "expired times should have been removed" not in str(info.value)


def test_an_untouched_todo_gets_the_same_sentence():
    def todo(*args):
        raise NotImplementedError("TODO: your code here")

    for exercise in (check.api_key_lookup, check.sliding_window):
        with pytest.raises(check.ExerciseFailed) as info:
            exercise(todo)
        assert TODO_MESSAGE in str(info.value)
