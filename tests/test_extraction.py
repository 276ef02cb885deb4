"""labkit.extraction (query synthesis, surrogate, fidelity, the HTTP client) and check.train_surrogate."""
import functools
import json

import httpx
import numpy as np
import pytest

from labkit import check, datasets, extraction


@functools.lru_cache(maxsize=1)
def _corpus():
    texts, labels = datasets.load("rt_polarity", split="train")
    return texts, labels


@functools.lru_cache(maxsize=1)
def _small_target():
    from labkit.serving import train_sentiment_model

    texts, labels = _corpus()
    roles = extraction.split_roles(texts, labels, seed=0)
    return train_sentiment_model(roles.target_texts[:1500], roles.target_labels[:1500], seed=0), roles


# --- who owns what, and query synthesis ------------------------------------------------------

def test_split_roles_gives_disjoint_text_and_keeps_labels_with_the_owner():
    texts, labels = _corpus()
    roles = extraction.split_roles(texts, labels, seed=3)
    assert not set(roles.attacker_texts) & set(roles.target_texts)
    assert len(roles.target_texts) == len(roles.target_labels) == round(0.5 * len(texts))
    assert len(roles.attacker_texts) >= len(texts) - len(roles.target_texts) - 20  # only duplicates dropped
    again = extraction.split_roles(texts, labels, seed=3)
    assert again.attacker_texts == roles.attacker_texts
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        extraction.split_roles(["a", "b", "c"], [0, 1])
    with pytest.raises(ValueError, match="target_share"):
        extraction.split_roles(["a", "b"], [0, 1], target_share=1.0)


def test_natural_queries_sample_without_repeats_and_refuse_too_large_budgets():
    pool = [f"sentence {i}" for i in range(50)]
    q = extraction.natural_queries(pool, 20, seed=1)
    assert len(q) == len(set(q)) == 20 and set(q) <= set(pool)
    assert q == extraction.natural_queries(pool, 20, seed=1) != extraction.natural_queries(pool, 20, seed=2)
    with pytest.raises(ValueError, match="owns 50 sentences but 60"):
        extraction.natural_queries(pool, 60)
    with pytest.raises(ValueError, match="positive whole number"):
        extraction.natural_queries(pool, 0)


def test_synthetic_queries_are_seeds_followed_by_one_word_edits():
    seeds = ["a truly great film", "dull and far too long", "the cast is superb"]
    q = extraction.synthetic_queries(seeds, 25, seed=0, variants_per_seed=5)
    assert len(q) == 25
    for start in range(0, 25, 5):
        seed_words = q[start].split()
        assert q[start] in seeds
        for variant in q[start + 1:start + 5]:
            words = variant.split()
            assert abs(len(words) - len(seed_words)) <= 1
            if len(words) == len(seed_words):  # a replacement changes at most one position
                assert sum(a != b for a, b in zip(words, seed_words)) <= 1
    with pytest.raises(ValueError, match="non-empty seed"):
        extraction.synthetic_queries(["", "   "], 5)


def test_benign_streams_are_independent_natural_samples():
    pool = [f"review {i}" for i in range(40)]
    streams = extraction.benign_streams(pool, 3, 10, seed=0)
    assert len(streams) == 3 and all(len(s) == len(set(s)) == 10 for s in streams)
    assert streams[0] != streams[1]
    with pytest.raises(ValueError, match="exceeds the 40 sentences"):
        extraction.benign_streams(pool, 2, 41)


# --- surrogate and fidelity ------------------------------------------------------------------

def test_soft_labels_recover_the_teacher_and_hard_labels_work_too():
    texts, p, eval_texts = check._surrogate_bench()
    teacher = np.array([1 if sum((w in check._POSITIVE_WORDS) - (w in check._NEGATIVE_WORDS) for w in t.split()) > 0
                        else 0 for t in eval_texts])
    soft = extraction.fit_surrogate(texts, p)
    hard = extraction.fit_surrogate(texts, (p > 0.5).astype(float))
    decided = np.array([sum((w in check._POSITIVE_WORDS) - (w in check._NEGATIVE_WORDS) for w in t.split()) != 0
                        for t in eval_texts])
    assert extraction.agreement(soft.predict(eval_texts)[decided], teacher[decided]) > 0.9
    assert extraction.agreement(hard.predict(eval_texts)[decided], teacher[decided]) > 0.85
    one_class = extraction.fit_surrogate(texts[:20], np.ones(20))  # every answer positive: still fits
    assert set(one_class.predict(eval_texts[:5])) <= {0, 1}
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        extraction.fit_surrogate(texts[:3], [0.2, 1.5, 0.1])
    with pytest.raises(ValueError, match="3 texts but 2 answers"):
        extraction.fit_surrogate(texts[:3], [0.2, 0.1])


def test_fidelity_and_curve():
    assert extraction.agreement([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    with pytest.raises(ValueError, match="same, non-zero length"):
        extraction.agreement([1], [1, 0])
    texts, p, eval_texts = check._surrogate_bench()
    target_labels = (extraction.fit_surrogate(texts, p).predict_proba(eval_texts)[:, 1] > 0.5).astype(int)
    rows = extraction.fidelity_curve(texts, p, [50, 400, 10_000], eval_texts, target_labels, true_labels=target_labels)
    assert [r["queries"] for r in rows] == [50, 400]  # budgets beyond the answers are skipped
    assert rows[-1]["fidelity"] == 1.0 and rows[-1]["accuracy"] == 1.0 and rows[0]["fidelity"] < 1.0
    assert extraction.queries_to_reach(rows, 0.99) == 400 and extraction.queries_to_reach(rows, 1.01) is None


@pytest.mark.parametrize("item, p", [
    ({"label": "positive", "probabilities": {"negative": 0.3, "positive": 0.7}}, 0.7),
    ({"label": "negative", "probabilities": {"negative": 0.6, "positive": 0.4}}, 0.4),
    ({"label": "positive", "label_id": 1}, 1.0),
    ({"label": "negative", "label_id": 0}, 0.0),
    ({"label": "positive", "probabilities": {"negative": -0.01, "positive": 1.01}}, 1.0),  # noisy, clipped
])
def test_answer_to_p(item, p):
    assert extraction.answer_to_p(item) == pytest.approx(p)


# --- the HTTP client, against a scripted transport --------------------------------------------

def _scripted(script):
    """A MockTransport that answers each POST with the next scripted (status, body, headers) or,
    for "ok", with label-only answers for the batch it received."""
    seen = []

    def handler(request):
        batch = json.loads(request.content)["instances"]
        seen.append(len(batch))
        status, body, headers = script.pop(0) if script else ("ok", None, {})
        if status == "ok":
            preds = [{"label": "positive" if "good" in item["text"] else "negative"} for item in batch]
            return httpx.Response(200, json={"predictions": preds})
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handler), seen


def test_client_batches_and_collects_label_only_answers():
    transport, seen = _scripted([])
    texts = [f"good {i}" if i % 2 else f"bad {i}" for i in range(10)]
    with extraction.QueryClient("http://api.test", "k", batch_size=4, transport=transport) as client:
        got = client.harvest(texts, progress=False)
    assert seen == [4, 4, 2] and got.requests == 3 and got.answered == 10
    assert got.p_positive == [0.0, 1.0] * 5 and got.labels == [0, 1] * 5 and not got.probabilities_shown
    assert "labels only" in str(got)


def test_client_waits_on_429_as_told_and_resends_the_same_batch():
    waits = []
    transport, seen = _scripted([("ok", None, {}), (429, {"error": "rate_limited", "detail": "slow down"},
                                                    {"Retry-After": "3"})])
    with extraction.QueryClient("http://api.test", "k", batch_size=5, transport=transport, sleep=waits.append) as c:
        got = c.harvest([f"good {i}" for i in range(10)], progress=False)
    assert waits == [3.0] and got.retries_429 == 1 and got.answered == 10 and seen == [5, 5, 5]


def test_client_stops_when_the_key_is_suspended_and_keeps_its_answers():
    transport, _ = _scripted([("ok", None, {}), (403, {"error": "key_suspended", "detail": "looks like extraction"}, {})])
    with extraction.QueryClient("http://api.test", "k", batch_size=3, transport=transport) as client:
        got = client.harvest([f"good {i}" for i in range(9)], progress=False)
    assert got.suspended and got.answered == 3 and "extraction" in got.suspended_detail
    assert "suspended after 3 answers" in str(got)


@pytest.mark.parametrize("status, error, hint", [
    (401, "missing_key", "pass api_key="),
    (403, "unknown_key", "does not know this key"),
    (422, "invalid_input", "lower batch_size"),
])
def test_client_explains_other_errors(status, error, hint):
    transport, _ = _scripted([(status, {"error": error, "detail": "refused"}, {})])
    with extraction.QueryClient("http://api.test", batch_size=2, transport=transport) as client:
        with pytest.raises(RuntimeError, match=hint):
            client.harvest(["good"], progress=False)


def test_client_gives_up_after_max_retries():
    script = [(429, {"error": "rate_limited", "detail": "no"}, {"Retry-After": "1"})] * 3
    transport, _ = _scripted(script)
    with extraction.QueryClient("http://api.test", batch_size=2, transport=transport, max_retries=2,
                                sleep=lambda s: None) as client:
        with pytest.raises(RuntimeError, match="still rate-limited after 2 waits"):
            client.harvest(["good"], progress=False)


# --- against the real API (uvicorn on loopback) ----------------------------------------------

def test_harvest_through_a_real_server_with_rate_limit_and_label_only_output():
    from labkit.serving import Defences, KeyStore, running

    model, roles = _small_target()
    keys = KeyStore()
    key = keys.issue("attacker")
    queries = roles.attacker_texts[:30]
    defences = Defences(auth=True, output="label", rate_limit=20, rate_window_s=1.0)
    with running(model, defences, keys=keys) as api:
        with extraction.QueryClient(api.url, api_key=key, batch_size=10) as client:
            got = client.harvest(queries, progress=False)
    assert not api.thread.is_alive()
    assert got.answered == 30 and got.retries_429 >= 1 and not got.probabilities_shown
    assert got.labels == list(model.predict(queries)) and set(got.p_positive) <= {0.0, 1.0}


def test_prada_calibration_separates_natural_from_synthetic_streams():
    model, roles = _small_target()
    natural = extraction.natural_queries(roles.attacker_texts, 160, seed=1)
    synthetic = extraction.synthetic_queries(roles.attacker_texts[:30], 160, seed=1, variants_per_seed=10)
    threshold, lows = extraction.calibrate_prada_threshold(model, [natural], min_queries=100, margin=0.05)
    assert threshold == pytest.approx(lows[0] - 0.05)
    w = extraction.w_trajectory(model, synthetic, min_queries=100)
    assert np.isnan(w[:50]).all() and np.nanmax(w) < threshold


# --- the learner check -----------------------------------------------------------------------

def _good(texts, p):
    model = extraction.surrogate_pipeline()
    n = len(texts)
    model.fit(texts + texts, np.r_[np.ones(n), np.zeros(n)], logisticregression__sample_weight=np.r_[p, 1 - p])
    return model


def _swapped(texts, p):
    model = extraction.surrogate_pipeline()
    n = len(texts)
    model.fit(texts + texts, np.r_[np.ones(n), np.zeros(n)], logisticregression__sample_weight=np.r_[1 - p, p])
    return model


def _thresholded(texts, p):
    return extraction.surrogate_pipeline().fit(texts, (np.asarray(p) > 0.5).astype(int))


def _probabilities_as_labels(texts, p):
    return extraction.surrogate_pipeline().fit(texts, p)


def _unfitted(texts, p):
    return extraction.surrogate_pipeline()


def _no_return(texts, p):
    _good(texts, p)


def _todo(texts, p):
    raise NotImplementedError("TODO")


def _other_model(texts, p):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    n = len(texts)
    return make_pipeline(CountVectorizer(), LogisticRegression(C=0.05)).fit(
        texts + texts, np.r_[np.ones(n), np.zeros(n)], logisticregression__sample_weight=np.r_[p, 1 - p])


def _extends_input(texts, p):
    n = len(texts)
    texts.extend(list(texts))
    return extraction.surrogate_pipeline().fit(texts, np.r_[np.ones(n), np.zeros(n)],
                                               logisticregression__sample_weight=np.r_[p, 1 - p])


_cache = {}


def _cached(texts, p):
    if "model" not in _cache:
        _cache["model"] = _good(texts, p)
    return _cache["model"]


def test_check_train_surrogate_passes_a_correct_answer():
    feedback = check.train_surrogate(_good)
    assert feedback.passed and feedback.details["agreement"] > 0.99


@pytest.mark.parametrize("fn, says", [
    (_swapped, "labels are swapped"),
    (_thresholded, "thresholded labels"),
    (_probabilities_as_labels, "needs class labels, not probabilities"),
    (_unfitted, "not fitted"),
    (_no_return, "returned None"),
    (_todo, "still TODO"),
    (_other_model, "surrogate_pipeline()"),
    (_extends_input, "changed the list of texts"),
    (_cached, "very same model object"),
    ("train_surrogate", "pass your function itself"),
])
def test_check_train_surrogate_names_the_mistake(fn, says):
    with pytest.raises(check.ExerciseFailed, match=None) as err:
        check.train_surrogate(fn)
    assert says in str(err.value)


def test_stolen_fidelity_falls_back_to_a_constant_guess_with_too_few_answers():
    texts, p, eval_texts = check._surrogate_bench()
    target_labels = np.array([1, 1, 1, 0] * 75)
    assert extraction.stolen_fidelity([], [], eval_texts, target_labels) == 0.75          # majority class
    assert extraction.stolen_fidelity(texts[:3], [0.1, 0.2, 0.3], eval_texts, target_labels) == 0.25  # saw only 0
    surrogate = extraction.fit_surrogate(texts, p)
    assert extraction.stolen_fidelity(texts, p, eval_texts, surrogate.predict(eval_texts)) == 1.0
