"""Behaviour every check shares: a learner's exception becomes a sentence, a wrong signature names
the expected one, an untouched TODO reads the same everywhere, and the kit's own answer is named."""
import numpy as np
import pytest

from labkit import check, extraction, poisoning
from labkit.check.common import TODO_MESSAGE


def spectral_good(reps):
    centred = reps - reps.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


def spectral_crashes(reps):
    return spectral_good(reps) + reps[1000]


def spectral_two_arguments(reps, k):
    return spectral_good(reps)


def spectral_todo(reps):
    raise NotImplementedError("TODO: centre, SVD, project, square")


def spectral_reference(reps):
    return poisoning.spectral_signature_scores(reps)


def test_spectral_signatures_passes_a_correct_answer():
    assert check.spectral_signatures(spectral_good).passed


@pytest.mark.parametrize("fn, words", [
    (spectral_crashes, "your function raised IndexError"),
    (spectral_two_arguments, r"signature spectral_two_arguments\(reps, k\).*spectral_signatures\(reps\)"),
    (spectral_todo, "still TODO"),
    (spectral_reference, r"kit's own answer \(labkit\.poisoning\.spectral_signature_scores\)"),
    (poisoning.spectral_signature_scores, "kit's own answer"),
])
def test_spectral_signatures_names_each_mistake(fn, words):
    with pytest.raises(check.ExerciseFailed, match=words) as info:
        check.spectral_signatures(fn)
    assert info.value.exercise == "spectral_signatures"


def surrogate_reference(texts, p):
    return extraction.fit_surrogate(texts, p)


def test_train_surrogate_names_the_kits_own_answer_and_a_wrong_signature():
    with pytest.raises(check.ExerciseFailed, match="kit's own answer"):
        check.train_surrogate(surrogate_reference)
    with pytest.raises(check.ExerciseFailed, match="signature"):
        check.train_surrogate(lambda texts: None)


@pytest.mark.parametrize("exercise, todo", [
    (check.fgsm, lambda model, x, y, eps: (_ for _ in ()).throw(NotImplementedError)),
    (check.spectral_signatures, spectral_todo),
    (check.train_surrogate, lambda texts, p: (_ for _ in ()).throw(NotImplementedError("TODO"))),
    (check.sliding_window, lambda log, now, limit, window_s: (_ for _ in ()).throw(NotImplementedError)),
    (check.api_key_lookup, lambda presented, digests: (_ for _ in ()).throw(NotImplementedError)),
])
def test_an_untouched_todo_reads_the_same_in_every_check(exercise, todo):
    with pytest.raises(check.ExerciseFailed) as info:
        exercise(todo)
    assert str(info.value).endswith(TODO_MESSAGE)
