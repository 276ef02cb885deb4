"""Check for the poisoning lab (08): spectral-signature outlier scores."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .common import Feedback, call, fail


def _spectral_bench(seed: int, n: int = 300, d: int = 12, n_poison: int = 18) -> np.ndarray:
    """One class's representations: an anisotropic clean cloud away from the origin, and a small
    shifted sub-population (the poison), so each typical mistake gives a different answer."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(2.0, 0.5, d)
    reps = rng.normal(size=(n, d)) * scales + rng.normal(3.0, 1.0, size=d)
    shift = rng.normal(size=d)
    reps[:n_poison] += 4.0 * shift / np.linalg.norm(shift) * scales.max()
    return reps


def _as_scores(exercise: str, out, n: int) -> np.ndarray:
    if out is None:
        fail(exercise, "your function returned None: return the array of scores (one per row).")
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().numpy()
    try:
        out = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as e:
        fail(exercise, f"return a numpy array of scores, not a {type(out).__name__}.", e)
    if out.ndim == 2 and 1 in out.shape:
        out = out.reshape(-1)
    if out.shape != (n,):
        fail(exercise, f"expected one score per sample, shape ({n},); got {out.shape}. Project every centred row "
              "onto the top right singular vector: centred @ vt[0] (the wrong axis gives one value per feature).")
    if not np.all(np.isfinite(out)):
        fail(exercise, "some scores are NaN or infinite.")
    return out


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-8 * max(1.0, float(np.abs(b).max()))))


def spectral_signatures(fn: Callable) -> Feedback:
    """Check a learner's `fn(reps) -> scores`: reps (n, d) holds one class's representations; the
    score of row i is ((reps[i] - mean) . v)^2 with v the top right singular vector of the centred
    matrix (Tran et al. 2018). Compared with `labkit.poisoning.spectral_signature_scores`."""
    from ..poisoning import spectral_signature_scores as reference

    exercise = "spectral_signatures"
    for seed in (0, 1):
        reps = _spectral_bench(seed)
        before = reps.copy()
        out = call(exercise, fn, (reps.copy(),), "spectral_signatures(reps), reps a numpy array (n, d)",
                   [(reference, "labkit.poisoning.spectral_signature_scores")])
        out = _as_scores(exercise, out, len(reps))
        ref = reference(before)
        if _close(out, ref):
            continue
        centred = before - before.mean(axis=0)
        u, s, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        _, _, vt_raw = np.linalg.svd(before, full_matrices=False)
        row_centred = before - before.mean(axis=1, keepdims=True)
        _, _, vt_row = np.linalg.svd(row_centred, full_matrices=False)
        if _close(out, (before @ vt_raw[0]) ** 2) or _close(out, (before @ vt_raw[0] - (before @ vt_raw[0]).mean()) ** 2):
            fail(exercise, "the representations were not centred before the SVD: subtract the mean over the samples "
                  "(reps - reps.mean(axis=0)), or the top singular vector just points at the mean.")
        if _close(out, (row_centred @ vt_row[0]) ** 2):
            fail(exercise, "you centred along the wrong axis: subtract the mean of each feature over the samples, "
                  "reps.mean(axis=0), not the mean of each row (axis=1).")
        if _close(np.abs(out), np.abs(proj)) or _close(out, np.abs(proj)):
            fail(exercise, "the scores are the projections themselves (or their absolute value): square them, "
                  "(centred @ v) ** 2, as Tran et al. do, so the score is the squared outlier distance.")
        if _close(out, u[:, 0] ** 2) or _close(out, np.abs(u[:, 0])) or _close(out, (s[0] * u[:, 0]) ** 2 / s[0]):
            fail(exercise, "you used the left singular vector u[:, 0]: it is the projection divided by the singular "
                  "value, a different scale. Use the top RIGHT singular vector v = vt[0] (rows of vt) and score "
                  "(centred @ v) ** 2.")
        if _close(out, (centred @ vt[:, 0]) ** 2):
            fail(exercise, "you took a column of vt (vt[:, 0]); the right singular vectors are its ROWS: v = vt[0].")
        if _close(out, (centred @ vt[-1]) ** 2):
            fail(exercise, "you used the LAST singular vector: numpy sorts singular values largest first, so the top "
                  "one is vt[0].")
        corr = np.corrcoef(out, ref)[0, 1] if np.std(out) > 0 else 0.0
        fail(exercise, f"your scores differ from the reference (correlation {corr:.2f}). Centre the rows with "
              "reps - reps.mean(axis=0), take np.linalg.svd(centred, full_matrices=False), v = vt[0], and return "
              "(centred @ v) ** 2.")
    top = np.argsort(-out)[:18]
    message = (f"matches the reference spectral-signature scores on two fixed classes; {np.mean(top < 18):.0%} of "
               "the planted outliers rank in the top 18.")
    return Feedback(exercise, True, message).show()
