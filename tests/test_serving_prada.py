"""Red-team finding 7: the "all layers" default must not lock out honest traffic. Long streams of
real held-out clients go through the query monitor that `Defences.all()` builds; none may be
flagged. The published Shapiro-Wilk test at W < 0.9 is run beside it to show why it is not the
default (on 20 streams of 3,000 held-out clients it flagged 6; the reference test none, largest KS
0.28 against the threshold 0.35). Prints the rates (run with -s)."""
import numpy as np
import pytest

from labkit import datasets
from labkit.serving import Defences, KeyStore, QueryMonitor, create_app, honest_streams, train_credit_model

STREAMS, QUERIES = 6, 1_000


@pytest.fixture(scope="module")
def credit():
    X, y = datasets.load("taiwan_credit", split="train")
    Xt, _ = datasets.load("taiwan_credit", split="test")
    return train_credit_model(X, y, seed=0, epochs=20), X, Xt


def _flags(monitor, model, Xt):
    flags, worst = honest_streams(monitor, model, Xt, STREAMS, QUERIES, seed=100)
    return sum(f is not None for f in flags), worst


def test_the_all_layers_default_does_not_flag_long_honest_streams(credit):
    model, X, Xt = credit
    d = Defences.all(integrity=False, audit=False)
    app = create_app(model, d, keys=KeyStore(), reference=X)
    monitor = app.state.labkit.monitor
    flagged, worst = _flags(monitor, model, Xt)
    published = QueryMonitor(extraction=True, probing=False, threshold=d.prada_threshold, min_queries=d.prada_min_queries,
                             window=d.prada_window)
    published_flagged, published_worst = _flags(published, model, Xt)
    print(f"\nDefences.all() ({d.prada_test} test): {flagged} of {STREAMS} honest streams of {QUERIES} flagged, "
          f"largest statistic {max(worst):.3f} (threshold {d.prada_ks_threshold}); Shapiro-Wilk W < "
          f"{d.prada_threshold}: {published_flagged} of {STREAMS} flagged, lowest W {min(published_worst):.3f}")
    assert d.prada_test == "reference" and flagged == 0, worst
    assert max(worst) < d.prada_ks_threshold - 0.03  # a margin, not a near miss


def test_probing_detection_spares_long_honest_streams(credit):
    """The probing detector's default limit: with 10 near-duplicates in 50 queries it flagged 4 of these
    20 honest streams of 3,000 held-out clients (their busiest 50-query windows hold 6 to 11)."""
    model, X, Xt = credit
    d = Defences()
    monitor = QueryMonitor(extraction=False, probing=True, probe_radius=QueryMonitor.calibrate_radius(model, X),
                           probe_limit=d.probe_limit, probe_window=d.probe_window)
    feats = model.features(Xt)
    for s in range(20):
        for i in np.random.default_rng(100 + s).permutation(len(Xt))[:3_000]:
            monitor.observe(f"bank_{s}", feats[i], 0)
    flagged = [f"{f.client} after {f.after_queries}" for f in monitor.flags.values()]
    print(f"\nprobing (limit {d.probe_limit} of {d.probe_window}): {len(flagged)} of 20 honest streams of 3,000 flagged")
    assert not flagged, flagged
