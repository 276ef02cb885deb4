"""labkit.ingestion: provenance, signed manifests, batch checks and quarantine."""
import numpy as np
import pytest

from labkit import ingestion

KEY = b"k" * 32
HAM = ["are we still on for lunch tomorrow", "ok see you at home later", "can you pick up milk on the way",
       "running late be there in ten", "happy birthday hope you have a great day", "call me when you are free",
       "did you watch the game last night", "mum says dinner is at seven", "thanks for yesterday it was fun",
       "where did you park the car"]
SPAM = ["win a free prize now call", "urgent your account won cash claim now", "free entry to win tickets txt"]


def _corpus(n, seed):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        if rng.random() < 0.15:
            texts.append(f"{SPAM[rng.integers(len(SPAM))]} {HAM[rng.integers(len(HAM))]}")
            labels.append(1)
        else:
            a, b, c = rng.choice(len(HAM), 3, replace=False)
            texts.append(f"{HAM[a]} {HAM[b]} {HAM[c]}")
            labels.append(0)
    return texts, np.array(labels)


@pytest.fixture(scope="module")
def baseline():
    texts, labels = _corpus(600, 0)
    return ingestion.Baseline(texts, labels, ["feed"] * len(texts), n_null=10)


def test_manifest_signs_and_verifies():
    texts, labels = ["a", "b"], [0, 1]
    m = ingestion.sign_manifest(ingestion.build_manifest(texts, labels, "feed", "b1", "2026-01-01T00:00"), KEY)
    assert m["records"][0]["sha256"] == ingestion.sha256_text("a")
    ingestion.verify_manifest(m, KEY, texts, labels)
    with pytest.raises(ingestion.ManifestError, match="does not verify"):
        ingestion.verify_manifest(m, b"x" * 32)
    edited = dict(m, records=[dict(r) for r in m["records"]])
    edited["records"][0]["label"] = 1
    with pytest.raises(ingestion.ManifestError, match="does not verify"):
        ingestion.verify_manifest(edited, KEY)
    with pytest.raises(ingestion.ManifestError, match="sha256"):
        ingestion.verify_manifest(m, KEY, ["A", "b"], labels)
    with pytest.raises(ingestion.ManifestError, match="labels"):
        ingestion.verify_manifest(m, KEY, texts, [1, 1])
    with pytest.raises(ingestion.ManifestError, match="not signed"):
        ingestion.verify_manifest(ingestion.build_manifest(texts, labels, "feed", "b1", "t"), KEY)
    with pytest.raises(ValueError, match="16 bytes"):
        ingestion.sign_manifest(m, b"short")


def test_clean_batch_passes_and_poisoned_batch_is_quarantined(baseline):
    pipeline = ingestion.IngestionPipeline(baseline, {"feed": KEY})
    texts, labels = _corpus(120, 1)
    ok = pipeline.submit(texts, labels, ingestion.sign_manifest(
        ingestion.build_manifest(texts, labels, "feed", "clean", "t"), KEY))
    assert ok.accepted, ok.reasons
    poison = [f"{SPAM[i % 3]} lumo xq {i}" for i in range(100)]
    ptexts, plabels = texts[:40] + poison, np.concatenate([labels[:40], np.zeros(100, int)])
    bad = pipeline.submit(ptexts, plabels, ingestion.sign_manifest(
        ingestion.build_manifest(ptexts, plabels, "feed", "poisoned", "t"), KEY))
    assert not bad.accepted
    joined = " ".join(bad.reasons)
    assert "token burst" in joined and "'lumo'" in joined and "label rate" in joined
    assert set(pipeline.accepted) == {"clean"} and set(pipeline.quarantine) == {"poisoned"}


def test_unknown_source_and_bad_signature_are_held(baseline):
    pipeline = ingestion.IngestionPipeline(baseline, {"feed": KEY})
    texts, labels = _corpus(50, 2)
    m = ingestion.build_manifest(texts, labels, "stranger", "s", "t")
    assert "unknown source" in pipeline.submit(texts, labels, ingestion.sign_manifest(m, KEY)).reasons[0]
    m = ingestion.build_manifest(texts, labels, "feed", "f", "t")
    d = pipeline.submit(texts, labels, ingestion.sign_manifest(m, b"z" * 32))
    assert not d.accepted and "provenance" in d.reasons[0]


def test_statistics(baseline):
    texts, _ = _corpus(100, 3)
    assert 0 <= baseline.drift(texts) < baseline.drift(["zzz qqq"] * 100) <= 1
    assert baseline.duplicate_share(["ok see you at home later"] * 5) == 1.0
    p, rate, base = baseline.label_p_value(np.ones(50, int), "feed")
    assert p < 1e-6 and rate == 1.0 and 0 < base < 0.3
    lim = baseline.limits(100)
    assert lim["drift"] > 0 and lim is baseline.limits(100)
    with pytest.raises(ValueError, match="100 trusted"):
        ingestion.Baseline(["a"], [0], ["s"])


# --- tabular records (card transactions from several banks) -------------------------------------

FRAUD_RATE = {"metro-bank": 0.01, "rural-coop": 0.005, "card-issuer": 0.06}


def _transactions(n, seed, source=None):
    """Nine numeric columns of mixed kinds (continuous, integer, rare and common 0/1), fraud labels
    at each bank's rate."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "amount": np.round(rng.lognormal(3.5, 1.0, n), 2),
        "hour": rng.integers(0, 24, n),
        "new_device": (rng.random(n) < 0.02).astype(int),
        "foreign": (rng.random(n) < 0.05).astype(int),
        "online": (rng.random(n) < 0.4).astype(int),
        "merchant_risk": rng.beta(2, 5, n),
        "tx_24h": rng.poisson(3, n),
        "distance_km": np.round(rng.exponential(20, n), 1),
        "card_age_days": rng.integers(30, 3000, n),
    })
    sources = np.array([source] * n) if source else rng.choice(sorted(FRAUD_RATE), n)
    labels = (rng.random(n) < np.array([FRAUD_RATE[s] for s in sources])).astype(int)
    return frame, labels, sources


@pytest.fixture(scope="module")
def tabular():
    frame, labels, sources = _transactions(20_000, 0)
    baseline = ingestion.TabularBaseline(frame, labels, sources)
    return baseline, ingestion.IngestionPipeline(baseline, {s: KEY for s in FRAUD_RATE})


def _submit(pipeline, frame, labels, source, batch_id):
    manifest = ingestion.build_manifest(frame, labels, source, batch_id, "2026-03-02T06:00:00+00:00")
    return pipeline.submit(frame, labels, ingestion.sign_manifest(manifest, KEY))


def test_sha256_record_is_canonical():
    import hashlib

    import pandas as pd

    row = {"b": 0.1, "a": 1}
    assert ingestion.sha256_record(row) == hashlib.sha256(b'{"a":1,"b":0.1}').hexdigest()
    assert ingestion.sha256_record({"a": 1, "b": 0.1}) == ingestion.sha256_record(row)  # key order is irrelevant
    # numbers hash by value: 1, 1.0, np.int64(1), np.float32(1) and True are the same cell
    same = [{"a": v, "b": 0.1} for v in (1.0, np.int64(1), np.float32(1.0), True)]
    assert {ingestion.sha256_record(r) for r in same} == {ingestion.sha256_record(row)}
    assert ingestion.sha256_record(pd.Series(row)) == ingestion.sha256_record(row)
    # floats by repr: the next float after 0.1 is another record
    assert ingestion.sha256_record({"a": 1, "b": np.nextafter(0.1, 1)}) != ingestion.sha256_record(row)
    assert ingestion.sha256_item("a") == ingestion.sha256_text("a")
    # pandas turns a mixed int/float row into floats (iloc): the row keeps its hash
    frame = pd.DataFrame({"n": [1, 2], "x": [0.5, 1.25]})
    assert ingestion.record_hashes(frame) == [ingestion.sha256_record(frame.iloc[i]) for i in range(2)]
    for bad, error, match in [(float("nan"), ValueError, "finite"), (float("inf"), ValueError, "finite"),
                              ("12.5", TypeError, "numbers only"), (None, TypeError, "numbers only")]:
        with pytest.raises(error, match=match):
            ingestion.sha256_record({"a": bad})
    with pytest.raises(TypeError, match="column names must be str"):
        ingestion.sha256_record({0: 1.0})


def test_manifest_of_rows_signs_and_verifies():
    frame, labels, _ = _transactions(50, 1, "metro-bank")
    m = ingestion.sign_manifest(ingestion.build_manifest(frame, labels, "metro-bank", "t1", "t"), KEY)
    assert m["records"][3]["sha256"] == ingestion.sha256_record(frame.iloc[3])
    ingestion.verify_manifest(m, KEY, frame, labels)
    ingestion.verify_manifest(m, KEY, frame.to_dict("records"), labels)  # a list of mappings works too
    altered = frame.copy()
    altered.loc[3, "amount"] += 0.01
    with pytest.raises(ingestion.ManifestError, match="row 3 does not match the sha256"):
        ingestion.verify_manifest(m, KEY, altered, labels)
    altered.loc[3, "amount"] = np.nan
    with pytest.raises(ingestion.ManifestError, match="row 3 cannot be hashed"):
        ingestion.verify_manifest(m, KEY, altered, labels)
    with pytest.raises(ingestion.ManifestError, match="50 rows, its manifest 49"):
        ingestion.verify_manifest(dict(ingestion.sign_manifest(dict(m, records=m["records"][:49]), KEY)), KEY,
                                  frame, labels)


def test_drift_is_the_two_sample_ks_statistic(tabular):
    from scipy.stats import ks_2samp

    baseline, _ = tabular
    batch, _, _ = _transactions(700, 2)
    drift = baseline.drift(batch)
    for column in batch.columns:  # continuous, integer and 0/1 columns, ties included
        assert drift[column] == pytest.approx(ks_2samp(batch[column], baseline.frame[column]).statistic, abs=1e-12)
    assert baseline.max_drift(batch) == max(drift.items(), key=lambda kv: kv[1])


def test_clean_rows_accepted_and_shifted_binary_column_quarantined(tabular):
    baseline, pipeline = tabular
    frame, labels, _ = _transactions(1000, 3, "metro-bank")
    ok = _submit(pipeline, frame, labels, "metro-bank", "rows-clean")
    assert ok.accepted, ok.reasons
    assert baseline.drift_alarm(frame) == []
    # 10% of the rows switch new_device from 0 to 1: its rate jumps from about 2% to about 12%
    shifted = frame.copy()
    rows = np.flatnonzero(shifted["new_device"].to_numpy() == 0)[:100]
    shifted.loc[rows, "new_device"] = 1
    bad = _submit(pipeline, shifted, labels, "metro-bank", "rows-shifted")
    assert not bad.accepted
    assert len(bad.reasons) == 1 and bad.reasons[0].startswith("feature drift: 'new_device' KS 0.1")
    assert bad.stats["max_drift_column"] == "new_device"
    assert bad.stats["drift"]["new_device"] > 3 * bad.stats["drift_limit"]["new_device"]
    # the serving-time monitor names the same column
    alarm = baseline.drift_alarm(shifted.assign(request_id=np.arange(1000)))
    assert len(alarm) == 1 and alarm[0].startswith("'new_device' KS")


def test_label_rate_attack_is_quarantined(tabular):
    baseline, pipeline = tabular
    frame, labels, _ = _transactions(2000, 4, "card-issuer")
    assert labels.sum() > 60  # about 6% fraud: hiding all of it is visible
    d = _submit(pipeline, frame, np.zeros_like(labels), "card-issuer", "rows-relabelled")
    assert not d.accepted
    assert any(r.startswith("label rate: 0.0% fraud from 'card-issuer'") for r in d.reasons), d.reasons
    assert not any(r.startswith("feature drift") for r in d.reasons)


def test_duplicate_burst_is_quarantined(tabular):
    _, pipeline = tabular
    frame, labels, _ = _transactions(1000, 5, "rural-coop")
    burst = frame.copy()
    burst.iloc[900:] = np.repeat(frame.iloc[:10].to_numpy(), 10, axis=0)  # 10 rows, each sent 11 times
    d = _submit(pipeline, burst, labels, "rural-coop", "rows-duplicated")
    assert not d.accepted
    assert any(r.startswith("duplicate burst: 11.0% of rows") for r in d.reasons), d.reasons


def test_tampered_row_is_refused_on_provenance(tabular):
    _, pipeline = tabular
    frame, labels, _ = _transactions(300, 6, "metro-bank")
    manifest = ingestion.sign_manifest(ingestion.build_manifest(frame, labels, "metro-bank", "rows-t", "t"), KEY)
    altered = frame.copy()
    altered.loc[7, "amount"] = 9999.0
    d = pipeline.submit(altered, labels, manifest)
    assert not d.accepted and d.reasons == ["provenance: row 7 does not match the sha256 in the manifest "
                                            "(altered in transit)."]
    d = pipeline.submit(frame, labels, ingestion.sign_manifest(dict(manifest, source="stranger"), KEY))
    assert not d.accepted and "unknown source 'stranger'" in d.reasons[0]
    assert {"rows-t"} <= set(pipeline.quarantine)


def test_clean_batches_of_several_sizes_pass_the_calibrated_limits(tabular):
    _, pipeline = tabular
    held = []
    for k in range(20):
        n, source = (300, 1000, 2000)[k % 3], sorted(FRAUD_RATE)[k % 3]
        frame, labels, _ = _transactions(n, 100 + k, source)
        reasons, stats = pipeline.check(frame, labels, source)
        held += reasons
    assert len(held) <= 1, held


def test_tabular_schema_labels_and_validation(tabular):
    baseline, pipeline = tabular
    frame, labels, _ = _transactions(300, 7, "metro-bank")
    reasons, _ = pipeline.check(frame.drop(columns="foreign"), labels, "metro-bank")
    assert reasons == ["schema: the batch's columns differ from the baseline's (missing ['foreign'], unexpected [])"]
    lim = baseline.limits(300)
    assert set(lim["drift"]) == set(frame.columns) and lim is baseline.limits(300) and lim["duplicates"] > 0
    # a source with no fraud in its history still gets a small positive rate: one fraud is no alarm
    quiet_frame, _, _ = _transactions(600, 8)
    quiet = ingestion.TabularBaseline(quiet_frame, np.r_[np.zeros(500, int), np.ones(100, int)],
                                      ["quiet"] * 500 + ["loud"] * 100, n_null=5)
    p, rate, base = quiet.label_p_value(np.r_[1, np.zeros(199, int)], "quiet")
    assert 0 < base < 0.05 and rate == 0.005 and p > 1e-4
    with pytest.raises(ValueError, match="NaN or inf"):
        ingestion.TabularBaseline(quiet_frame.assign(amount=np.nan), np.zeros(600, int), ["q"] * 600)
    with pytest.raises(ValueError, match="0 or 1"):
        ingestion.TabularBaseline(quiet_frame, np.full(600, 2), ["q"] * 600)
    with pytest.raises(TypeError, match="TabularBaseline"):
        pipeline.check(["a message"], [0], "metro-bank")


def test_text_checks_live_in_the_baseline(baseline):
    texts, labels = _corpus(40, 9)
    texts += [f"{SPAM[i % 3]} lumo xq {i}" for i in range(60)]  # 'lumo' in 60% of the messages
    labels = np.r_[labels, np.zeros(60, int)]
    default = ingestion.IngestionPipeline(baseline, {"feed": KEY}).check(texts, labels, "feed")
    assert default == baseline.check(texts, labels, "feed")
    assert "lumo" in default[1]["burst_tokens"]
    lenient = ingestion.IngestionPipeline(baseline, {"feed": KEY}, burst_min_share=0.7, burst_ratio=2.0)
    reasons, stats = lenient.check(texts, labels, "feed")  # the burst options reach the text checks
    assert stats["burst_tokens"] == [] and not any(r.startswith("token burst") for r in reasons)
    assert (reasons, stats) == baseline.check(texts, labels, "feed", alpha=1e-4, burst_min_share=0.7,
                                              burst_ratio=2.0)
    with pytest.raises(TypeError, match="TabularBaseline"):
        baseline.check(_transactions(10, 0)[0], np.zeros(10, int), "feed")
