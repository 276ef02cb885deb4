"""labkit.text_attacks: the TextAttack model wrapper (shapes, probabilities), the offline recipe
list, the attack loop's metrics on a known model, the look-alike transformation; and the monitor."""
import numpy as np
import pytest

from labkit.textattack_offline import VARIABLES as PREPARED

TEXTS = ["win a free prize now, call to claim", "free entry to win cash", "see you at lunch",
         "are you coming home tonight", "claim your free award today", "meeting moved to noon"]
LABELS = np.array([1, 1, 0, 0, 1, 0])


@pytest.fixture(scope="module")
def ta(tmp_path_factory):
    """labkit.text_attacks imported in this process, prepared into a temporary cache; every
    variable prepare() sets and NLTK's state are restored after the module."""
    import nltk

    with pytest.MonkeyPatch.context() as mp:
        for name in PREPARED:
            mp.setenv(name, "unset")
            mp.delenv(name)
        mp.setenv("LABKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(nltk, "download", nltk.download)
        mp.setattr(nltk.data, "path", list(nltk.data.path))
        from labkit import text_attacks

        text_attacks.textattack_offline.prepare()
        yield text_attacks


@pytest.fixture(scope="module")
def model():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(), LogisticRegression(C=100)).fit(TEXTS, LABELS)


def test_wrapper_returns_probabilities_of_the_right_shape(ta, model):
    wrapper = ta.PipelineWrapper(model, batch_size=4)
    out = wrapper(TEXTS)
    assert isinstance(out, np.ndarray) and out.shape == (6, 2) and out.dtype == np.float64
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert ((out >= 0) & (out <= 1)).all()
    np.testing.assert_allclose(out, model.predict_proba(TEXTS))  # batching changes nothing
    assert (out.argmax(axis=1) == LABELS).all()
    assert wrapper([]).shape == (0, 2)


def test_wrapper_applies_preprocess_and_refuses_bad_input(ta, model):
    seen = []
    wrapper = ta.PipelineWrapper(model, preprocess=lambda t: seen.append(t) or "see you at lunch")
    assert wrapper(["win a free prize"]).argmax() == 0 and seen == ["win a free prize"]
    with pytest.raises(TypeError, match="LIST"):
        ta.PipelineWrapper(model)("one message")
    with pytest.raises(TypeError, match="predict_proba"):
        ta.PipelineWrapper(object())
    with pytest.raises(NotImplementedError, match="gradient-free"):
        ta.PipelineWrapper(model).get_grad("x")


def test_recipes_that_need_downloads_are_refused(ta, model):
    wrapper = ta.PipelineWrapper(model)
    with pytest.raises(ValueError, match="cannot run offline"):
        ta.recipe("TextFoolerJin2019", wrapper)
    with pytest.raises(ValueError, match="unknown"):
        ta.recipe("NoSuchRecipe", wrapper)
    attack = ta.recipe("DeepWordBugGao2018", wrapper, query_budget=7)
    assert attack.goal_function.query_budget == 7


def test_attack_metrics_on_a_known_model(ta, model):
    wrapper = ta.PipelineWrapper(model)
    texts = TEXTS[:2] + ["see you at lunch"]  # the last is ham labelled spam: skipped, not attacked
    run = ta.run(ta.recipe("DeepWordBugGao2018", wrapper), texts, [1, 1, 1], name="dwb", progress=False)
    m = run.metrics()
    c = run.counts()
    assert m["n"] == 3 and c["skipped"] == 1 and c["successful"] + c["failed"] == 2
    assert m["clean_accuracy"] == pytest.approx(2 / 3)
    assert m["success_rate"] == pytest.approx(c["successful"] / 2)
    assert m["accuracy_under_attack"] == pytest.approx(c["failed"] / 3)
    assert 0 <= m["words_changed"] <= 1 and m["queries"] > 0
    for adv in run.adversarial():
        assert wrapper([adv]).argmax() == 0  # every successful adversarial message fools the model
    assert len(run.originals()) == c["successful"]
    with pytest.raises(ValueError, match="labels"):
        ta.run(ta.recipe("DeepWordBugGao2018", wrapper), texts, [1], progress=False)


def test_an_attack_assembled_from_the_four_parts_breaks_the_toy_model_and_shows_its_diff(ta, model):
    from textattack import Attack
    from textattack.constraints.pre_transformation import RepeatModification
    from textattack.goal_functions import UntargetedClassification
    from textattack.search_methods import GreedyWordSwapWIR

    wrapper = ta.PipelineWrapper(model)
    attack = Attack(UntargetedClassification(wrapper), [RepeatModification()], ta.VisualSwap(), GreedyWordSwapWIR("delete"))
    run = ta.run(attack, TEXTS[:2], [1, 1], progress=False)
    assert run.counts()["successful"] == 2 and run.metrics()["success_rate"] == 1.0
    html = ta.diff_html(run, k=1)
    assert html.count("<tr>") == 2 and "P(spam)" in html and ("<font" in html or "<span" in html)
    assert "no successful attack" in ta.diff_html(ta.AttackRun("none", [], 0.0))


def test_visual_swap_reads_the_same_to_a_person(ta):
    from labkit.text_defences import sanitise

    swap = ta.VisualSwap()
    words = swap._get_replacement_words("free")
    assert words and all(len(w) == 4 and w != "free" for w in words)
    assert "fr3e" in words and "frее"[:3] + "e" != "free"
    assert all(sanitise(w, ["free"]).lower() == "free" for w in words)
    with pytest.raises(ValueError):
        ta.VisualSwap(homoglyphs=False, leet=False)


def test_visual_swap_random_one_offers_a_single_look_alike_from_the_full_list(ta):
    import random

    random.seed(0)
    every = ta.VisualSwap()._get_replacement_words("prize")
    one = ta.VisualSwap(random_one=True)
    picks = [one._get_replacement_words("prize") for _ in range(30)]
    assert all(len(p) == 1 and p[0] in every for p in picks)
    assert len({p[0] for p in picks}) > 1  # random, not always the first candidate
    assert one._get_replacement_words("fr") == []  # no look-alike for f or r: no candidate


def test_monitor_false_flags_at_most_its_rate_on_what_it_was_fitted_on():
    from labkit.text_defences import Monitor

    clean = ["see you at lunch", "are you coming home tonight", "meeting moved to noon", "call me later"] * 25
    monitor = Monitor(["lunch"], false_flag_rate=0.05).fit(clean)
    assert monitor.flag_rate(clean) <= 0.05
    assert monitor.flags(["fr\u200bee prіze", "w1n c4sh n0w"]).all()
    with pytest.raises(RuntimeError, match="fit"):
        Monitor([]).flags(["x"])
    with pytest.raises(ValueError, match="false_flag_rate"):
        Monitor([], false_flag_rate=0)
