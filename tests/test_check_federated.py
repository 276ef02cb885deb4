"""labkit.check.norm_clip: the right answer passes; each typical wrong answer fails with the sentence
that names it."""
import numpy as np
import pytest

from labkit import check, federated


def _update(g, c):
    return [ci - gi for gi, ci in zip(g, c)]


def _norm(arrays):
    return float(np.sqrt(sum((a ** 2).sum() for a in arrays)))


def right(g, c, bound):
    u = _update(g, c)
    f = min(1.0, bound / _norm(u))
    return [gi + f * ui for gi, ui in zip(g, u)]


def clips_the_model(g, c, bound):
    f = min(1.0, bound / _norm(c))
    return [f * ci for ci in c]


def per_layer(g, c, bound):
    return [gi + ui * min(1.0, bound / np.linalg.norm(ui)) if np.linalg.norm(ui) > 0 else gi + ui
            for gi, ui in zip(g, _update(g, c))]


def scales_up(g, c, bound):
    u = _update(g, c)
    return [gi + (bound / _norm(u)) * ui for gi, ui in zip(g, u)]


def returns_update(g, c, bound):
    u = _update(g, c)
    return [ui * min(1.0, bound / _norm(u)) for ui in u]


def coordinate_clip(g, c, bound):
    return [gi + np.clip(ui, -bound, bound) for gi, ui in zip(g, _update(g, c))]


def in_place(g, c, bound):
    u = _update(g, c)
    f = min(1.0, bound / _norm(u))
    for gi, ci, ui in zip(g, c, u):
        ci[...] = gi + f * ui
    return c


def flat_vector(g, c, bound):
    return np.concatenate([a.ravel() for a in right(g, c, bound)])


def todo(g, c, bound):
    raise NotImplementedError


def no_clip(g, c, bound):
    return [ci.copy() for ci in c]


def test_the_right_answer_passes():
    assert check.norm_clip(right).passed


def test_the_kits_reference_passes_the_check_but_calling_it_is_named():
    def uses_reference(g, c, bound):
        return federated.clip_update_reference(g, c, bound)

    with pytest.raises(check.ExerciseFailed, match="kit's own answer"):
        check.norm_clip(uses_reference)


@pytest.mark.parametrize("fn, says", [
    (clips_the_model, "clipped the client's model, not its update"),
    (per_layer, "each layer on its own"),
    (scales_up, "scaled a small update up to the bound"),
    (returns_update, "returned the clipped update, not the client's weights"),
    (coordinate_clip, "each coordinate"),
    (in_place, "changed its inputs in place"),
    (flat_vector, "one flat vector"),
    (todo, "still TODO"),
    (no_clip, "above the bound"),
])
def test_each_typical_mistake_is_named(fn, says):
    with pytest.raises(check.ExerciseFailed, match=says):
        check.norm_clip(fn)
