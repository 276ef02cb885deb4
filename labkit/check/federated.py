"""Checks for the federated lab (06): norm-bound clipping of one client's contribution, the server-side
defence of Sun et al. (2019) against boosted (model-replacement) updates.

The learner's `norm_clip(global_weights, client_weights, bound)` gets the global model and one client's
model as lists of numpy arrays (one per layer) and returns the client's model with its *update*
(client - global, all layers together) scaled down to L2 norm at most `bound`. The fixed cases make
each typical mistake give a different, recognisable answer: the global model is far from zero (so
clipping the model is not clipping the update), the big update spreads its norm over two layers (so
clipping per layer lets more through), one update is already small (so scaling every update to the
bound is caught), and one case clips coordinates rather than the norm.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .common import Feedback, call, fail

EXERCISE = "norm_clip"
EXPECTED = "norm_clip(global_weights, client_weights, bound)"
TOL = 1e-6


def _references():
    from .. import federated

    return [(federated.clip_update_reference, "labkit.federated.clip_update_reference")]


def _norm(arrays) -> float:
    return float(np.sqrt(sum(float((np.asarray(a, dtype=np.float64) ** 2).sum()) for a in arrays)))


def _reference(global_weights, client_weights, bound):
    update = [c - g for g, c in zip(global_weights, client_weights)]
    norm = _norm(update)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return [g + scale * u for g, u in zip(global_weights, update)]


def _cases():
    rng = np.random.default_rng(6)
    g = [rng.normal(0.0, 1.0, (4, 3)) + 2.0, rng.normal(0.0, 1.0, 3) - 1.0]  # far from zero

    def with_update(layer_norms, spread=None):
        ups = []
        for shape, target in zip([(4, 3), (3,)], layer_norms):
            u = rng.normal(0.0, 1.0, shape) if spread is None else spread(shape)
            ups.append(u * (target / np.linalg.norm(u)) if target > 0 else np.zeros(shape))
        return [a + u for a, u in zip(g, ups)]

    return [
        (g, with_update([3.0, 4.0]), 1.0, "an update of norm 5 split over two layers (3 and 4)"),
        (g, with_update([0.18, 0.24]), 1.0, "a small update of norm 0.3"),
        (g, with_update([0.0, 2.0], spread=lambda s: np.array([1.0, 0.05, 0.05])), 0.5,
         "an update of norm 2 on the bias alone, mostly in one coordinate"),
    ]


def _as_arrays(out, like) -> list[np.ndarray]:
    if out is None:
        fail(EXERCISE, "your function returned None: return the clipped client weights, a list of arrays "
             "shaped like client_weights.")
    if isinstance(out, np.ndarray) and out.ndim == 1 and out.size == sum(a.size for a in like):
        fail(EXERCISE, "you returned one flat vector: reshape the clipped update back into one array per layer "
             "(the same shapes as client_weights), the format Flower's ArrayRecord carries.")
    if not isinstance(out, (list, tuple)):
        fail(EXERCISE, f"return a list of numpy arrays (one per layer), not a {type(out).__name__}.")
    if len(out) != len(like):
        fail(EXERCISE, f"you returned {len(out)} arrays for a model of {len(like)} layers: return one array per layer.")
    arrays = []
    for i, (a, ref) in enumerate(zip(out, like)):
        a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
        if a.shape != ref.shape:
            fail(EXERCISE, f"layer {i} has shape {a.shape} but the client's layer has shape {ref.shape}: keep "
                 "each layer's shape.")
        arrays.append(a.astype(np.float64))
    return arrays


def _close(a, b) -> bool:
    return all(np.allclose(x, y, atol=TOL, rtol=0) for x, y in zip(a, b))


def norm_clip(fn: Callable) -> Feedback:
    """Check `fn(global_weights, client_weights, bound) -> clipped client weights` (lists of arrays)."""
    for g, c, bound, about in _cases():
        g_in, c_in = [a.copy() for a in g], [a.copy() for a in c]
        out = _as_arrays(call(EXERCISE, fn, (g_in, c_in, bound), EXPECTED, _references()), c)
        if not (_close(g_in, g) and _close(c_in, c)):
            fail(EXERCISE, f"({about}) your function changed its inputs in place: the server still needs the "
                 "global model and the client's reply; compute on copies (update = [c - g for ...]).")
        want = _reference(g, c, bound)
        if _close(out, want):
            continue
        update = [c_ - g_ for g_, c_ in zip(g, c)]
        got_update = [o - g_ for o, g_ in zip(out, g)]
        u_norm = _norm(update)
        scale_model = min(1.0, bound / _norm(c))
        if _close(out, [scale_model * c_ for c_ in c]) or _close(out, [min(1.0, bound / max(np.linalg.norm(c_), 1e-12)) * c_ for c_ in c]):
            fail(EXERCISE, f"({about}) you clipped the client's model, not its update: the norm bound is on "
                 "the change the client proposes, u = client - global; return global + u * min(1, bound / ||u||).")
        if _close(out, [u * min(1.0, bound / u_norm) for u in update]):
            fail(EXERCISE, f"({about}) you returned the clipped update, not the client's weights: add it back to "
                 "the global model, global + clipped update (Flower aggregates weights).")
        per_layer = [g_ + u * min(1.0, bound / max(np.linalg.norm(u), 1e-12)) for g_, u in zip(g, update)]
        if _close(out, per_layer):
            fail(EXERCISE, f"({about}) you clipped each layer on its own, so the whole update can reach "
                 f"{_norm([p - g_ for p, g_ in zip(per_layer, g)]):.2f} > bound {bound:g}: compute one norm over "
                 "all layers together and scale every layer by the same factor min(1, bound / ||u||).")
        if _close(out, [g_ + np.clip(u, -bound, bound) for g_, u in zip(g, update)]):
            fail(EXERCISE, f"({about}) you clipped each coordinate to [-bound, bound] (np.clip) instead of the "
                 "update's L2 norm: that keeps the direction's shape wrong and the norm unbounded; scale the "
                 "whole update by min(1, bound / ||u||).")
        if u_norm < bound and abs(_norm(got_update) - bound) < 1e-4:
            fail(EXERCISE, f"({about}) you scaled a small update up to the bound: clipping only shrinks, with "
                 "factor min(1, bound / ||u||); an update already under the bound passes unchanged.")
        got_norm = _norm(got_update)
        if got_norm > bound + 1e-6:
            fail(EXERCISE, f"({about}) the update you return has norm {got_norm:.3f}, above the bound {bound:g}: "
                 "scale it by bound / ||u|| when ||u|| > bound, with ||u|| over all layers together.")
        fail(EXERCISE, f"({about}) your clipped weights differ from global + u * min(1, bound / ||u||) "
             f"(update norm {u_norm:.3f}, bound {bound:g}, your update's norm {got_norm:.3f}).")
    return Feedback(EXERCISE, True, "clips the whole update (all layers together) to the bound, leaves small "
                    "updates alone and returns the client's weights without touching the inputs.").show()
