"""Feature squeezing (labkit.squeezing) on a tiny model: inputs on the decision boundary are flagged,
clean inputs far from it are not, and the threshold keeps the false-flag rate it was set for."""
import numpy as np
import pytest

from labkit import squeezing
from labkit.serving.models import FeatureRange, FraudModel


def tiny_model():
    # two hidden units pass x0 - x1 through: the fraud logit is 40 * (x0 - x1), flat far from the boundary
    return FraudModel(["a", "b"], np.array([False, False]), np.zeros(2), np.ones(2),
                      [np.array([[1.0, -1.0], [-1.0, 1.0]]), np.array([[40.0], [-40.0]])], [np.zeros(2), np.zeros(1)],
                      [FeatureRange(n, -1.0, 1.0, False) for n in "ab"])


@pytest.fixture(scope="module")
def detector():
    model = tiny_model()
    rng = np.random.default_rng(0)
    clean = rng.uniform(-1, 1, (2_000, 2))
    clean = clean[np.abs(clean[:, 0] - clean[:, 1]) > 0.6]  # clean traffic stays away from the boundary
    return squeezing.SqueezingDetector.calibrate(squeezing.mlp_proba(model), clean, (-np.ones(2), np.ones(2)),
                                                 bit_depth=3, false_flag_rate=0.01), clean


def test_mlp_proba_matches_the_model():
    model = tiny_model()
    x = np.array([[0.2, -0.1], [-0.5, 0.4]])
    np.testing.assert_allclose(squeezing.mlp_proba(model)(model.features(x)), model.predict_proba(x), atol=1e-12)


def test_boundary_inputs_are_flagged_clean_ones_are_not(detector):
    det, clean = detector
    # just across the boundary (x0 - x1 = 0.02): squeezing to 8 levels moves them back
    knife_edge = np.array([[0.16, 0.14], [-0.41, -0.43], [0.73, 0.71]])
    assert det.flag(knife_edge).all()
    far = np.array([[0.9, -0.9], [-0.8, 0.7]])
    assert not det.flag(far).any()


def test_false_flag_rate_is_what_it_was_calibrated_for(detector):
    det, clean = detector
    rng = np.random.default_rng(1)
    fresh = rng.uniform(-1, 1, (4_000, 2))
    fresh = fresh[np.abs(fresh[:, 0] - fresh[:, 1]) > 0.6]
    assert det.flag(fresh).mean() <= 0.03


def test_score_is_the_l1_distance(detector):
    det, _ = detector
    x = np.array([[0.16, 0.14]])
    expected = np.abs(det.predict_proba(x) - det.predict_proba(det.squeeze(x))).sum(1)
    np.testing.assert_allclose(det.score(x), expected)


def test_bad_settings_are_refused():
    proba = squeezing.mlp_proba(tiny_model())
    clean = np.zeros((200, 2))
    with pytest.raises(ValueError, match="false_flag_rate"):
        squeezing.SqueezingDetector.calibrate(proba, clean, (-np.ones(2), np.ones(2)), false_flag_rate=0)
    with pytest.raises(ValueError, match="cannot set"):
        squeezing.SqueezingDetector.calibrate(proba, clean[:10], (-np.ones(2), np.ones(2)), false_flag_rate=0.01)
    with pytest.raises(ValueError, match="low < high"):
        squeezing.SqueezingDetector.calibrate(proba, clean, (np.ones(2), np.ones(2)))
