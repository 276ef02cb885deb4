"""Runtime detection of adversarial inputs by feature squeezing (Xu, Evans and Qi, NDSS 2018).

    detector = squeezing.SqueezingDetector.calibrate(proba_fn, clean_features, clip_values,
                                                     bit_depth=4, false_flag_rate=0.01)
    detector.score(features)      # L1 distance between the predictions on the raw and squeezed input
    detector.flag(features)       # True where the score is above the calibrated threshold

An adversarial input sits just across the decision boundary, where a small change of the input
moves the prediction a lot; squeezing (here: ART's `FeatureSqueezing`, which rounds every feature to
2**bit_depth levels of its range) undoes part of the attacker's careful perturbation, so the
prediction on the squeezed input differs from the one on the raw input. A clean input far from
the boundary barely moves. The threshold is set on clean traffic at a chosen false-flag rate.

It is a detector, not a proof: an attacker who knows the squeezer can optimise against the model
and its squeezed twin together (He et al. 2017 broke feature squeezing that way); the capstone
reports that limit rather than hiding it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["SqueezingDetector", "mlp_proba"]


def mlp_proba(model) -> Callable[[np.ndarray], np.ndarray]:
    """The (n, 2) class probabilities of a labkit tabular model (CreditModel, FraudModel) computed
    from its *standardised* inputs `model.features(X)`: the space the squeezer works in."""
    from .serving.models import _softmax2

    def proba(h: np.ndarray) -> np.ndarray:
        h = np.asarray(h, dtype=float)
        for i, (w, b) in enumerate(zip(model.weights, model.biases)):
            h = h @ w + b
            if i < len(model.weights) - 1:
                h = np.maximum(h, 0)
        return _softmax2(h[:, 0])

    return proba


@dataclass
class SqueezingDetector:
    predict_proba: Callable[[np.ndarray], np.ndarray]
    clip_values: tuple
    bit_depth: int
    threshold: float
    false_flag_rate: float

    def squeeze(self, x: np.ndarray) -> np.ndarray:
        from art.defences.preprocessor import FeatureSqueezing

        lo, hi = (np.asarray(v, dtype=float) for v in self.clip_values)
        squeezer = FeatureSqueezing(clip_values=(lo, hi), bit_depth=int(self.bit_depth))
        return squeezer(np.clip(np.asarray(x, dtype=float), lo, hi))[0]

    def score(self, x: np.ndarray) -> np.ndarray:
        """L1 distance between the class probabilities of the raw and the squeezed input."""
        x = np.asarray(x, dtype=float)
        return np.abs(self.predict_proba(x) - self.predict_proba(self.squeeze(x))).sum(1)

    def flag(self, x: np.ndarray) -> np.ndarray:
        return self.score(x) > self.threshold

    @classmethod
    def calibrate(cls, predict_proba, clean: np.ndarray, clip_values, bit_depth: int = 4,
                  false_flag_rate: float = 0.01) -> "SqueezingDetector":
        """The threshold is the (1 - false_flag_rate) quantile of the scores of clean inputs (keep
        them apart from the inputs the false-flag rate is later measured on)."""
        if not 0 < false_flag_rate < 1:
            raise ValueError(f"false_flag_rate must lie in (0, 1); got {false_flag_rate}.")
        if len(clean) < 1 / false_flag_rate:
            raise ValueError(f"{len(clean)} clean inputs cannot set a {false_flag_rate:.1%} false-flag threshold; "
                             f"give at least {int(np.ceil(1 / false_flag_rate))}.")
        lo, hi = (np.asarray(v, dtype=float) for v in clip_values)
        if lo.shape != hi.shape or np.any(lo >= hi):
            raise ValueError("clip_values must be (low, high) with low < high for every feature.")
        detector = cls(predict_proba, (lo, hi), int(bit_depth), 0.0, false_flag_rate)
        detector.threshold = float(np.quantile(detector.score(clean), 1 - false_flag_rate))
        return detector
