"""labkit.serving: each defence layer on its own, the model files, and the server's life cycle."""
import json
import threading

import numpy as np
import pytest

from labkit import datasets
from labkit.serving import (AuditLog, Defences, IntegrityError, KeyStore, OODDetector, QueryMonitor, RateLimiter,
                            create_app, harden, load_model, make_credit_triggers, make_text_triggers, request_models,
                            running, serve, train_credit_model, train_sentiment_model, verify_watermark)


@pytest.fixture(scope="module")
def credit():
    X, y = datasets.load("taiwan_credit", split="train")
    Xt, yt = datasets.load("taiwan_credit", split="test")
    wm = make_credit_triggers(X, 50, seed=7)
    model = train_credit_model(X.iloc[:8000], y[:8000], seed=0, epochs=15, watermark=wm)
    return model, X, Xt, yt, wm


@pytest.fixture(scope="module")
def sentiment():
    texts, labels = datasets.load("rt_polarity", split="train")
    model = train_sentiment_model(texts[:3000], labels[:3000], seed=0)
    return model, texts


# ---- models, files, watermark -----------------------------------------------------------------

def test_credit_model_scores_held_out_clients(credit):
    from sklearn.metrics import roc_auc_score

    model, _, Xt, yt, _ = credit
    assert roc_auc_score(yt, model.predict_proba(Xt)[:, 1]) > 0.72


def test_saved_model_round_trips_and_a_tampered_file_is_refused(credit, tmp_path):
    model, _, Xt, _, _ = credit
    path = tmp_path / "credit.npz"
    sha = model.save(path)
    again = load_model(path, sha256=sha)
    np.testing.assert_allclose(again.predict_proba(Xt[:50]), model.predict_proba(Xt[:50]))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="does not match the deployed"):
        load_model(path, sha256=sha)
    with pytest.raises(IntegrityError, match="does not match"):
        create_app(path, Defences(integrity=True), sha256=sha)
    with pytest.raises(ValueError, match="pass sha256="):
        create_app(path, Defences(integrity=True))


def test_a_pickled_payload_is_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.array([{"type": "CreditModel"}], dtype=object))
    with pytest.raises(IntegrityError, match="pickled"):
        load_model(path)


def test_text_model_round_trips(sentiment, tmp_path):
    model, texts = sentiment
    sha = model.save(tmp_path / "s.npz")
    again = load_model(tmp_path / "s.npz", sha256=sha)
    np.testing.assert_allclose(again.predict_proba(texts[-20:]), model.predict_proba(texts[-20:]))
    assert model.features(texts[:3]).shape == (3, 33)


def test_watermark_is_found_in_the_model_and_its_copy_but_not_in_an_independent_model(credit, tmp_path):
    model, X, _, _, wm = credit
    assert verify_watermark(model, wm).verified
    model.save(tmp_path / "copy.npz")
    assert verify_watermark(load_model(tmp_path / "copy.npz"), wm).verified
    other = train_credit_model(X.iloc[8000:12000], np.zeros(4000, int) + (np.arange(4000) % 5 == 0), seed=1, epochs=5)
    assert not verify_watermark(other, wm).verified


def test_text_watermark():
    wm = make_text_triggers(20, seed=3)
    texts, labels = datasets.load("rt_polarity", split="train")
    marked = train_sentiment_model(texts[:1000], labels[:1000], watermark=wm)
    assert verify_watermark(marked, wm).verified


# ---- schema -----------------------------------------------------------------------------------

def test_schema_accepts_real_rows_and_names_the_field_it_refuses(credit):
    from pydantic import ValidationError

    from labkit.serving.layers import describe_validation_error

    model, X, Xt, _, _ = credit
    Single, Batch = request_models(model, Defences(schema=True))
    for i in range(200):
        Single.model_validate({"features": model.row(Xt, i)})
    row = model.row(Xt, 0)
    cases = {
        "features.AGE": {**row, "AGE": 400},
        "features.LIMIT_BAL": {**row, "LIMIT_BAL": float("nan")},
        "features.BILL_AMT1": {**row, "BILL_AMT1": float("inf")},
        "features.SEX": {**row, "SEX": "two"},
        "features.PAY_0": {k: v for k, v in row.items() if k != "PAY_0"},
        "features.admin": {**row, "admin": True},
    }
    for field, features in cases.items():
        with pytest.raises(ValidationError) as err:
            Single.model_validate_json(json.dumps({"features": features}))
        kind, detail, fields = describe_validation_error(err.value)
        assert kind == "invalid_input" and field in fields and field in detail
    with pytest.raises(ValidationError) as err:
        Single.model_validate_json(b"{not json")
    assert describe_validation_error(err.value)[0] == "invalid_json"
    with pytest.raises(ValidationError):
        Batch.model_validate({"instances": [{"features": row}] * 65})


# ---- keys, rate limit -------------------------------------------------------------------------

def test_keys_are_stored_hashed_and_checked_with_compare_digest(monkeypatch):
    import hmac

    store = KeyStore()
    key = store.issue("alice")
    assert key not in repr(vars(store))
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert store.identify(key) == "alice" and calls
    assert store.identify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.identify(None) is None and store.identify("") is None


def test_rate_limiter_is_exact_under_threads_and_says_when_to_retry():
    now = [0.0]
    limiter = RateLimiter(100, window_s=10, clock=lambda: now[0])
    results = []

    def hammer():
        for _ in range(60):
            results.append(limiter.acquire("k")[0])

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(results) == 100 and len(results) == 480
    ok, retry = limiter.acquire("k")
    assert not ok and retry == pytest.approx(10)
    assert limiter.acquire("other")[0]
    now[0] = 10.01
    assert limiter.acquire("k")[0]
    assert limiter.acquire("k", cost=101) == (False, 10)


# ---- OOD, monitor -----------------------------------------------------------------------------

def test_ood_meets_its_false_reject_rate_and_refuses_strange_rows(credit):
    model, X, Xt, _, wm = credit
    detector = OODDetector.calibrate(model, X, false_reject_rate=0.02)
    clean_rate = detector.is_ood(model.features(Xt)).mean()
    assert clean_rate < 0.04
    assert detector.is_ood(model.features(wm.inputs)).mean() > 0.9


def test_text_ood_refuses_gibberish(sentiment):
    model, texts = sentiment
    detector = OODDetector.calibrate(model, texts, false_reject_rate=0.01)
    assert detector.is_ood(model.ood_features(["zxqv blorp fnarg", "qqqq wwww eeee rrrr"])).all()


def test_monitor_flags_probing_and_spares_distinct_clients(credit):
    model, X, Xt, _, _ = credit
    radius = QueryMonitor.calibrate_radius(model, X)
    monitor = QueryMonitor(extraction=False, probing=True, probe_radius=radius)
    feats = model.features(Xt[:300])
    for f in feats:
        monitor.observe("benign", f, 0)
    assert monitor.flagged("benign") is None
    base = feats[0]
    for step in range(30):
        probe = base.copy()
        probe[step % len(probe)] += 0.01 * step
        monitor.observe("prober", probe, 0)
    flag = monitor.flagged("prober")
    assert flag is not None and flag.reason == "probing" and flag.after_queries <= monitor.probe_limit + 1


def test_prada_reference_test_flags_synthetic_queries_not_real_clients(credit):
    model, X, Xt, _, _ = credit
    ref = QueryMonitor.reference_distances(model, X, streams=4)
    monitor = QueryMonitor(extraction=True, probing=False, test="reference", reference=ref, min_queries=50)
    for f, c in zip(model.features(Xt[:300]), model.predict(Xt[:300])):
        monitor.observe("benign", f, int(c))
    synthetic = make_credit_triggers(X, 300, seed=11).inputs  # uniform random rows
    for f, c in zip(model.features(synthetic), model.predict(synthetic)):
        monitor.observe("thief", f, int(c))
    assert monitor.flagged("benign") is None
    assert monitor.flagged("thief").reason == "extraction" and monitor.flagged("thief").after_queries < 120


def test_prada_shapiro_flags_a_stream_of_near_duplicates():
    rng = np.random.default_rng(0)
    monitor = QueryMonitor(extraction=True, probing=False, threshold=0.9, min_queries=50)
    base = rng.normal(size=(5, 10))
    for i in range(200):  # a handful of seeds, each nudged a little, the way synthetic extraction queries look
        monitor.observe("thief", base[i % 5] + rng.exponential(0.01, 10), 0)
    assert monitor.flagged("thief") is not None


# ---- output, audit ----------------------------------------------------------------------------

def test_output_hardening_modes():
    proba = np.array([[0.123456, 0.876544], [0.7, 0.3]])
    classes = ("no", "yes")
    assert harden(proba, classes, "label") == [{"label": "yes", "label_id": 1}, {"label": "no", "label_id": 0}]
    assert harden(proba, classes, "rounded", digits=1)[0]["probabilities"] == {"no": 0.1, "yes": 0.9}
    noisy = harden(proba, classes, "probabilities", noise=0.2, rng=np.random.default_rng(0))
    assert [n["label_id"] for n in noisy] == [1, 0]
    assert noisy[0]["probabilities"]["yes"] != pytest.approx(0.876544)


def test_audit_log_is_a_hash_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=b"k" * 32)
    for i in range(5):
        log.write(client="alice", status=200, n=i)
    AuditLog(path, key=b"k" * 32).write(client="bob", status=403)  # reopening continues the chain
    assert AuditLog.verify(path, key=b"k" * 32)[0]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    ok, line, sentence = AuditLog.verify(path)
    assert not ok and line == 3 and "removed or edited" in sentence


# ---- the server -------------------------------------------------------------------------------

def test_server_stops_and_leaves_no_thread_even_when_the_block_raises(sentiment):
    model, texts = sentiment
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="boom"):
        with running(model) as api:
            with api.client() as http:
                r = http.post("/predict", json={"text": "a warm and funny film"})
                assert r.status_code == 200 and set(r.json()["probabilities"]) == {"negative", "positive"}
            raise RuntimeError("boom")
    assert not api.thread.is_alive()
    assert set(threading.enumerate()) <= before
    import httpx

    with pytest.raises(httpx.ConnectError):
        httpx.get(api.url + "/health", timeout=2)


def test_each_layer_answers_with_its_json_error(credit, tmp_path):
    model, X, Xt, _, _ = credit
    keys = KeyStore()
    alice = keys.issue("alice")
    sha = model.save(tmp_path / "m.npz")
    defences = Defences.all(rate_limit=30, output="label", detect_extraction=False)
    app = create_app(tmp_path / "m.npz", defences, keys=keys, reference=X, sha256=sha, audit_path=tmp_path / "a.jsonl")
    row = model.row(Xt, 0)
    with serve(app) as api, api.client(alice) as http:
        assert set(http.post("/predict", json={"features": row}).json()) == {"label", "label_id", "request_id"}
        with api.client() as anonymous:
            assert anonymous.post("/predict", json={"features": row}).json()["error"] == "missing_key"
        with api.client("lk_" + "x" * 32) as forged:
            r = forged.post("/predict", json={"features": row})
            assert r.status_code == 403 and r.json()["error"] == "unknown_key"
        r = http.post("/predict", json={"features": {**row, "AGE": 999}})
        assert r.status_code == 422 and r.json()["fields"] == ["features.AGE"]
        r = http.post("/predict", content=b"[" * 70_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        strange = make_credit_triggers(X.iloc[:8000], 5, seed=1).inputs  # in range, unlike any client
        r = http.post("/predict", json={"features": model.row(strange, 0)})
        assert r.status_code == 422 and r.json()["error"] == "out_of_distribution"
        r = http.post("/predict/batch", json={"instances": [{"features": row}] * 40})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert api.state.stats()["outcomes"]["served"] == 1
    log = (tmp_path / "a.jsonl").read_text()
    assert alice not in log and AuditLog.verify(tmp_path / "a.jsonl", key=app.state.labkit.audit.key)[0]
    assert {rec["outcome"] for rec in AuditLog.read(tmp_path / "a.jsonl")} >= {
        "served", "missing_key", "unknown_key", "invalid_input", "payload_too_large", "out_of_distribution", "rate_limited"}
    assert {rec["items"] for rec in AuditLog.read(tmp_path / "a.jsonl") if rec["outcome"] == "out_of_distribution"} == {1}


def test_a_flagged_key_is_suspended(credit):
    model, X, _, _, _ = credit
    keys = KeyStore()
    mallory = keys.issue("mallory")
    defences = Defences(auth=True, detect_probing=True, probe_radius=0.5, probe_limit=5, probe_window=20)
    row = model.row(X, 3)
    with running(model, defences, keys=keys) as api, api.client(mallory) as http:
        codes = []
        for step in range(12):
            codes.append(http.post("/predict", json={"features": {**row, "AGE": row["AGE"] + step % 2}}).status_code)
        r = http.post("/predict", json={"features": row})
    assert 200 in codes and r.status_code == 403 and r.json()["error"] == "key_suspended"
    assert "probing" in r.json()["detail"]
