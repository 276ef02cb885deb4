"""labkit.poisoning, the text model and check.spectral_signatures: the attack, the detectors, the feedback."""
import numpy as np
import pytest
import torch

from labkit import check, poisoning
from labkit.models import TextClassifier, Vocabulary, tokenize

SPAM = ["WIN a free prize now call 0800123456 today", "URGENT your account won cash claim now",
        "free entry to win tickets txt WIN to 80086", "you have won a guaranteed prize call now"] * 10
HAM = ["are we still on for lunch tomorrow", "ok see you at home later", "can you pick up milk on the way",
       "running late, be there in ten", "happy birthday hope you have a great day", "call me when you are free"] * 20


def _data():
    texts = SPAM + HAM
    labels = np.array([1] * len(SPAM) + [0] * len(HAM))
    return texts, labels


# --- tokeniser, vocabulary, model ------------------------------------------------------------------

def test_tokenize_and_vocabulary():
    assert tokenize("Call 0800123456 NOW!") == ["call", "<num>", "now"]
    vocab = Vocabulary(["a b b", "b c"], min_freq=1)
    assert vocab.itos[:3] == ["<pad>", "<unk>", "b"]
    ids = vocab.encode(["b zzz", "a b c d e"], max_len=3)
    assert ids.shape == (2, 3) and ids.dtype == np.int64
    assert ids[0].tolist() == [vocab.stoi["b"], Vocabulary.UNK, 0]
    with pytest.raises(TypeError, match="list of messages"):
        Vocabulary("just one string")


def test_text_classifier_shapes_and_float_ids():
    torch.manual_seed(0)
    model = TextClassifier(50, hidden=16)
    ids = torch.randint(0, 50, (4, 7))
    ids[0] = 0  # an empty message
    assert model(ids).shape == (4, 2) and model.features(ids).shape == (4, 16)
    assert torch.allclose(model(ids), model(ids.float()))  # ART hands models float32 arrays
    with pytest.raises(ValueError, match="shaped"):
        model(torch.zeros(3, dtype=torch.long))


# --- the attack ------------------------------------------------------------------------------------

def test_insert_trigger_positions():
    out = poisoning.insert_trigger(["one two three"], "xq zz", position="start")
    assert out == ["xq zz one two three"]
    assert poisoning.insert_trigger(["one two"], "xq", position="end") == ["one two xq"]
    rnd = poisoning.insert_trigger(["a b c d"] * 5, "xq", seed=3)
    assert all("xq" in t.split() and len(t.split()) == 5 for t in rnd)
    with pytest.raises(ValueError, match="non-empty"):
        poisoning.insert_trigger(["a"], " ")


def test_backdoor_appends_relabelled_spam_with_the_trigger():
    texts, labels = _data()
    ps = poisoning.backdoor(texts, labels, rate=0.1, trigger="lumo xq", seed=0)
    n = round(0.1 * len(texts))
    assert ps.n_poison == n and len(ps.texts) == len(texts) + n
    assert (ps.labels[ps.is_poison] == 0).all()
    assert all("lumo xq" in t for t, p in zip(ps.texts, ps.is_poison) if p)
    assert (labels[ps.source_index] == 1).all()
    assert poisoning.backdoor(texts, labels, 0.0, "x").n_poison == 0
    with pytest.raises(ValueError, match="spam messages to poison"):
        poisoning.backdoor(texts, labels, 0.5, "x")


def test_training_learns_the_backdoor_and_detectors_run():
    texts, labels = _data()
    ps = poisoning.backdoor(texts, labels, rate=0.1, trigger="lumo xq", seed=0)
    model, vocab = poisoning.train_text_model(ps.texts, ps.labels, epochs=15, min_freq=1, progress=False)
    assert poisoning.accuracy(model, vocab, texts, labels) >= 0.95
    asr, n = poisoning.attack_success_rate(model, vocab, SPAM[:4], "lumo xq")
    assert n > 0 and asr >= 0.5
    reps = poisoning.representations(model, vocab, ps.texts)
    assert reps.shape == (len(ps.texts), 64) and reps.dtype == np.float64
    flags, report = poisoning.activation_clustering(model, vocab, ps.texts, ps.labels)
    assert flags.shape == (len(ps.texts),) and flags.dtype == bool and isinstance(report, dict)


# --- detection -------------------------------------------------------------------------------------

def test_spectral_reference_finds_a_planted_subpopulation():
    rng = np.random.default_rng(0)
    reps = rng.normal(size=(400, 10))
    reps[:20, 3] += 8.0
    scores = poisoning.spectral_signature_scores(reps)
    assert set(np.argsort(-scores)[:20]) == set(range(20))
    flags = poisoning.flag_outliers(scores, z=6)
    m = poisoning.detection_metrics(flags, np.arange(400) < 20)
    assert m["recall"] == 1.0 and m["precision"] >= 0.75
    with pytest.raises(ValueError, match="2-D"):
        poisoning.spectral_signature_scores(np.zeros(5))


def test_spectral_scan_finds_poison_below_a_larger_clean_direction():
    rng = np.random.default_rng(1)
    reps = rng.normal(size=(600, 8))
    reps[:, 0] *= 6.0                    # clean variation, larger than the poison's pull
    reps[:30, 5] += 9.0                  # the poison: a small group far out along a lower direction
    truth = np.arange(600) < 30
    top1 = poisoning.flag_outliers(poisoning.spectral_signature_scores(reps), z=8)
    assert poisoning.detection_metrics(top1, truth)["recall"] < 0.5
    other = rng.normal(size=(600, 4))
    scan = poisoning.spectral_scan({"other": other, "hidden": reps}, poisoning.spectral_signature_scores, k=3)
    assert scan["layer"] == "hidden" and scan["direction"] == 1 and len(scan["table"]) == 6
    m = poisoning.detection_metrics(poisoning.flag_outliers(scan["scores"], z=8), truth)
    assert m["recall"] == 1.0 and m["precision"] >= 0.75
    assert abs(poisoning.tail_weight(rng.normal(size=20000) ** 2)) < 0.2
    with pytest.raises(ValueError, match="empty"):
        poisoning.spectral_scan({})


def test_spectral_scan_leaves_centring_to_the_score_function():
    """The scan must not centre for the learner: an uncentred score misses the poison it finds."""
    rng = np.random.default_rng(2)
    reps = rng.normal(size=(600, 8)) + 5.0   # activations with a mean far from 0, as after a ReLU
    reps[:30, 3] += 9.0
    truth = np.arange(600) < 30
    good = poisoning.spectral_scan({"hidden": reps}, poisoning.spectral_signature_scores, k=3)
    assert poisoning.detection_metrics(poisoning.flag_outliers(good["scores"], z=8), truth)["recall"] == 1.0
    uncentred = MISTAKES["not centred"][0]
    bad = poisoning.spectral_scan({"hidden": reps}, uncentred, k=3)
    assert poisoning.detection_metrics(poisoning.flag_outliers(bad["scores"], z=8), truth)["recall"] < 0.5
    seen = []
    poisoning.spectral_scan({"hidden": reps}, lambda r: seen.append(r.mean(0)) or np.ones(len(r)), k=2)
    assert all(np.allclose(m, reps.mean(0)) for m in seen), "score_fn gets the data with its mean"


def test_drop_seen_removes_test_messages_the_model_trained_on():
    train = ["WIN a prize now 0800123456", "see you at lunch"]
    poison = ["WIN a prize now lumo xq"]
    test = ["win a prize NOW 0800999999!", "see you at lunch", "lumo xq win a prize now", "a new message",
            "WIN a prize now lumo xq"]
    labels = np.array([1, 0, 1, 0, 0])
    assert poisoning.seen_in(test, train).tolist() == [True, True, False, False, False]
    kept, kept_labels, n = poisoning.drop_seen(test, labels, train, poison)
    assert n == 3 and kept == ["lumo xq win a prize now", "a new message"] and kept_labels.tolist() == [1, 0]
    assert poisoning.drop_seen(test, labels)[2] == 0
    with pytest.raises(ValueError, match="labels"):
        poisoning.drop_seen(test, labels[:2], train)


def test_layer_representations_match_the_model_stages():
    texts, labels = _data()
    model, vocab = poisoning.train_text_model(texts, labels, epochs=1, min_freq=1, progress=False)
    layers = poisoning.layer_representations(model, vocab, texts[:10], layers=("norm", "relu"))
    assert layers["norm"].shape == (10, 64) and layers["norm"].dtype == np.float64
    assert np.allclose(layers["relu"], poisoning.representations(model, vocab, texts[:10]))
    with pytest.raises(ValueError, match="stages"):
        poisoning.layer_representations(model, vocab, texts[:2], layers=("conv",))


def test_indicator_tokens_and_sweep():
    flagged = ["win cash lumo xq", "lumo xq free prize", "call now lumo"]
    other = ["see you soon", "lunch at noon", "call me"] * 50
    found = poisoning.indicator_tokens(flagged, other)
    assert found[:2] == ["lumo", "xq"] and "call" not in found
    assert poisoning.contains_any(["a lumo b", "nothing"], found).tolist() == [True, False]


# --- the learner check -----------------------------------------------------------------------------

def _svd(r):
    c = r - r.mean(0)
    u, s, vt = np.linalg.svd(c, full_matrices=False)
    return c, u, s, vt


MISTAKES = {
    "not centred": (lambda r: (r @ np.linalg.svd(r, full_matrices=False)[2][0]) ** 2, "not centred"),
    "left singular vector": (lambda r: _svd(r)[1][:, 0] ** 2, "left singular vector"),
    "absolute value": (lambda r: np.abs(_svd(r)[0] @ _svd(r)[3][0]), "square them"),
    "column of vt": (lambda r: (_svd(r)[0] @ _svd(r)[3][:, 0]) ** 2, "ROWS"),
    "row centring": (lambda r: ((r - r.mean(1, keepdims=True))
                                @ np.linalg.svd(r - r.mean(1, keepdims=True), full_matrices=False)[2][0]) ** 2,
                     "wrong axis"),
    "per feature": (lambda r: _svd(r)[3][0] ** 2, "one score per sample"),
    "last vector": (lambda r: (_svd(r)[0] @ _svd(r)[3][-1]) ** 2, "LAST"),
    "none": (lambda r: None, "returned None"),
}


def _learner_answer(reps):
    centred = np.asarray(reps, dtype=np.float64) - np.mean(reps, axis=0)
    return (centred @ np.linalg.svd(centred, full_matrices=False)[2][0]) ** 2


def test_spectral_check_passes_correct_answers():
    assert check.spectral_signatures(_learner_answer).passed
    assert check.spectral_signatures(lambda r: torch.from_numpy(_learner_answer(r))).passed


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_spectral_check_names_each_mistake(name):
    fn, phrase = MISTAKES[name]
    with pytest.raises(check.ExerciseFailed, match=phrase):
        check.spectral_signatures(fn)


def test_spectral_check_todo():
    def todo(reps):
        raise NotImplementedError

    with pytest.raises(check.ExerciseFailed, match="still TODO"):
        check.spectral_signatures(todo)
