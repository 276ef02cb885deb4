"""labkit.check.smoothing_predict / smoothing_certify: the correct answer passes, and each typical
mistake fails with a sentence that names it."""
import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, norm

from labkit import check, smoothing
from labkit.check import ExerciseFailed


def _counts(model, x, n, sigma, generator):
    return smoothing.sample_counts(model, x, n, sigma, generator)


def predict_ok(model, x, sigma, n, alpha, generator):
    counts = _counts(model, x, n, sigma, generator)
    top = np.argsort(counts)[::-1][:2]
    n_a, n_b = int(counts[top[0]]), int(counts[top[1]])
    return int(top[0]) if binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha else -1


def predict_no_abstain(model, x, sigma, n, alpha, generator):
    return int(_counts(model, x, n, sigma, generator).argmax())


def predict_against_n(model, x, sigma, n, alpha, generator):
    counts = _counts(model, x, n, sigma, generator)
    return int(counts.argmax()) if binomtest(int(counts.max()), n, 0.5).pvalue <= alpha else -1


def predict_no_noise(model, x, sigma, n, alpha, generator):
    return predict_ok(model, x, 0.0, n, alpha, generator)


def make_certify(bound="cp", same_samples=False, sigma_in_radius=True, abstain=True, select_from_est=False):
    def certify(model, x, sigma, n0, n, alpha, generator):
        if same_samples:
            est = _counts(model, x, n, sigma, generator)
            c_a = int(est.argmax())
        else:
            sel = _counts(model, x, n0, sigma, generator)
            est = _counts(model, x, n, sigma, generator)
            c_a = int(est.argmax() if select_from_est else sel.argmax())
        k = int(est[c_a])
        if bound == "cp":
            p = beta.ppf(alpha, k, n - k + 1)
        elif bound == "two_sided":
            p = beta.ppf(alpha / 2, k, n - k + 1)
        else:  # normal approximation
            ph = k / n
            p = ph - norm.ppf(1 - alpha) * np.sqrt(ph * (1 - ph) / n)
        if p < 0.5 and abstain:
            return -1, 0.0
        r = norm.ppf(p) if p < 1 else float("inf")
        return c_a, float(sigma * r if sigma_in_radius else r)
    return certify


def test_correct_predict_passes():
    assert check.smoothing_predict(predict_ok).passed


def test_the_kit_reference_passes_the_comparison_but_is_refused():
    def uses_kit(model, x, sigma, n, alpha, generator):
        return smoothing.predict(model, x, sigma, n, alpha, generator)
    with pytest.raises(ExerciseFailed, match="kit's own answer"):
        check.smoothing_predict(uses_kit)


@pytest.mark.parametrize("fn, words", [
    (predict_no_abstain, "abstains"),
    (predict_against_n, "runner-up"),
    (predict_no_noise, "clean image"),
])
def test_predict_mistakes(fn, words):
    with pytest.raises(ExerciseFailed, match=words):
        check.smoothing_predict(fn)


def test_todo_predict():
    def todo(model, x, sigma, n, alpha, generator):
        raise NotImplementedError
    with pytest.raises(ExerciseFailed, match="not done yet"):
        check.smoothing_predict(todo)


def test_correct_certify_passes():
    fb = check.smoothing_certify(make_certify())
    assert fb.passed


@pytest.mark.parametrize("kwargs, words", [
    (dict(same_samples=True), "same samples"),
    (dict(bound="normal"), "normal approximation"),
    (dict(bound="two_sided"), "two-sided"),
    (dict(abstain=False), "must abstain"),
    (dict(sigma_in_radius=False), "without sigma"),
    (dict(select_from_est=True), "estimation samples"),
])
def test_certify_mistakes(kwargs, words):
    with pytest.raises(ExerciseFailed, match=words):
        check.smoothing_certify(make_certify(**kwargs))


def test_certify_wrong_return_type_and_learner_error():
    with pytest.raises(ExerciseFailed, match="pair"):
        check.smoothing_certify(lambda model, x, sigma, n0, n, alpha, generator: 3)

    def broken(model, x, sigma, n0, n, alpha, generator):
        raise ValueError("boom")
    with pytest.raises(ExerciseFailed, match="ValueError: boom"):
        check.smoothing_certify(broken)


def test_check_leaves_torch_rng_alone():
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    check.smoothing_certify(make_certify())
    assert torch.equal(torch.rand(3), a)
