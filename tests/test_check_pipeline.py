"""The capstone's checks (release gate, feature-squeezing score) against the answers learners write."""
import numpy as np
import pytest

from labkit import check, signing
from labkit.check import ExerciseFailed

BOTH = tuple(s for s in ("ed25519", "ml-dsa-65") if s in signing.available_schemes())


# ---- release_gate ---------------------------------------------------------------------------

def gate_right(model_path, trusted):
    return signing.load_signed_model(model_path, trusted, require=BOTH)[0]


def gate_default_scheme(model_path, trusted):  # trusts the default: Ed25519 alone
    return signing.load_signed_model(model_path, trusted)[0]


def gate_swallows(model_path, trusted):  # logs the refusal, then loads the file anyway
    from labkit.serving.models import load_model

    try:
        return signing.load_signed_model(model_path, trusted, require=BOTH)[0]
    except signing.SignatureError:
        return load_model(model_path)


def gate_returns_none(model_path, trusted):
    try:
        return signing.load_signed_model(model_path, trusted, require=BOTH)[0]
    except signing.SignatureError:
        return None


def gate_hash_only(model_path, trusted):  # checks nothing, just loads
    from labkit.serving.models import load_model

    return load_model(model_path)


def gate_todo(model_path, trusted):
    raise NotImplementedError


def test_release_gate_passes_the_right_answer():
    assert check.release_gate(gate_right).passed


@pytest.mark.skipif(len(BOTH) < 2, reason="ML-DSA is not available here")
def test_release_gate_names_a_single_scheme():
    with pytest.raises(ExerciseFailed, match="Ed25519 alone"):
        check.release_gate(gate_default_scheme)


@pytest.mark.parametrize("gate, words", [
    (gate_swallows, "bytes you parse|do not catch"),
    (gate_returns_none, "returned None instead of refusing"),
    (gate_hash_only, "changed by one byte|without any signature"),
    (gate_todo, "TODO"),
])
def test_release_gate_catches_typical_mistakes(gate, words):
    with pytest.raises(ExerciseFailed, match=words):
        check.release_gate(gate)


def test_release_gate_foreign_keys_named():
    # whether or not the document carries public keys, a gate that trusts them must fail on the foreign file
    def gate(model_path, trusted):
        if "foreign" in str(model_path):
            return gate_hash_only(model_path, trusted)
        return gate_right(model_path, trusted)

    with pytest.raises(ExerciseFailed, match="keys you do not trust"):
        check.release_gate(gate)


def test_release_gate_refusing_the_good_file():
    def gate(model_path, trusted):
        return signing.load_signed_model(model_path, [], require=BOTH)[0]

    with pytest.raises(ExerciseFailed, match="properly signed file was refused"):
        check.release_gate(gate)


# ---- squeezing_score ------------------------------------------------------------------------

def score_right(predict_proba, x, squeeze):
    return np.abs(predict_proba(x) - predict_proba(squeeze(x))).sum(axis=1)


@pytest.mark.parametrize("fn, words", [
    (lambda p, x, s: (p(x) - p(s(x))).sum(axis=1), "all zero"),
    (lambda p, x, s: (p(x).argmax(1) != p(s(x)).argmax(1)).astype(float), "predicted labels"),
    (lambda p, x, s: np.sqrt(((p(x) - p(s(x))) ** 2).sum(axis=1)), "L2 or max"),
    (lambda p, x, s: np.abs(p(x) - p(s(x))).max(axis=1), "L2 or max"),
    (lambda p, x, s: float(np.abs(p(x) - p(s(x))).sum()), "one number for the whole batch"),
    (lambda p, x, s: np.abs(p(s(x)) - p(s(s(x)))).sum(axis=1), "all zero"),
    (lambda p, x, s: None, "returned None"),
])
def test_squeezing_score_catches_typical_mistakes(fn, words):
    def learner(predict_proba, x, squeeze):
        return fn(predict_proba, x, squeeze)

    with pytest.raises(ExerciseFailed, match=words):
        check.squeezing_score(learner)


def test_squeezing_score_in_place_change_is_named():
    def learner(predict_proba, x, squeeze):
        x[:] = squeeze(x)
        return score_right(predict_proba, x, squeeze)

    with pytest.raises(ExerciseFailed, match="in place"):
        check.squeezing_score(learner)


def test_squeezing_score_passes_the_right_answer():
    assert check.squeezing_score(score_right).passed


def test_squeezing_bench_has_a_label_flip():
    # otherwise comparing labels would give all zeros and be mistaken for the cancelling-sum mistake
    from labkit.check.pipeline import _score_bench

    proba, squeeze, x = _score_bench()
    assert (proba(x).argmax(1) != proba(squeeze(x)).argmax(1)).any()
