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
