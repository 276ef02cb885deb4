"""Secure aggregation (Flower's SecAgg+) with client-side clipping, and the capstone's FraudTask.

The federated runs use a tiny numpy task (a 5x2 linear model, four banks) so that a whole run
takes well under a second in-process; FraudTask is kept to 3 banks x 3000 rows, 2 rounds.
"""
import math

import numpy as np
import pandas as pd
import pytest

from labkit import federated, fraud, fraud_task, secure_federated
from labkit.fraud_task import FraudTask
from labkit.serving.models import FraudModel

# Opacus and torch chatter about settings the lab chose on purpose; keep the report readable.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Optimal order is the largest alpha:UserWarning",
    "ignore:Secure RNG turned off:UserWarning",
    "ignore:The given NumPy array is not writable:UserWarning",
)

ROUNDS = 3
NO_CLIP = 1e3        # a bound no tiny update comes near: the wrapper and the mod run, but never bind
SMALL_CLIP = 0.05    # below every tiny update's norm (checked in `reference_fedavg`): clipping binds
SECAGG_TOL = 1e-4    # SecAgg+ quantises each value to 2**22 levels over [-8, 8], so ~4e-6 per round


class TinyTask:
    """The task interface secure_federated needs, in numpy: each bank runs a few steps of gradient
    descent for least squares on its own random data, seeded by (bank, round), so every update is
    deterministic and different per bank. Parameters stay far inside SecAgg+'s [-8, 8] range."""

    num_banks = 4

    def __init__(self):
        self.history = []  # the global arrays the server evaluated, one entry per round

    def initial_arrays(self):
        return [np.full((5, 2), 0.1), np.zeros(2)]

    def local_update(self, partition_id, arrays, server_round):
        rng = np.random.default_rng([int(partition_id), int(server_round)])
        x = rng.normal(size=(20, 5))
        y = 0.5 * x @ rng.normal(size=(5, 2)) + partition_id  # the offset makes banks disagree
        w, b = (np.array(a, dtype=float, copy=True) for a in arrays)
        for _ in range(3):
            residual = x @ w + b - y
            w -= 0.05 * x.T @ residual / len(x)
            b -= 0.05 * residual.mean(0)
        return [w, b]

    def evaluate(self, arrays):
        self.history.append([np.array(a, dtype=float, copy=True) for a in arrays])
        return {"norm": float(np.sqrt(sum(np.sum(np.square(a)) for a in arrays)))}


def flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def run_consortium(secure: bool, clipping_norm: float, rounds: int = ROUNDS):
    """One in-process run of the consortium apps; returns (log, task)."""
    task, log = TinyTask(), secure_federated.ConsortiumLog()
    server = secure_federated.make_consortium_server_app(lambda ctx: task, rounds, secure=secure,
                                                         clipping_norm=clipping_norm, log=log)
    client = secure_federated.make_bank_client_app(lambda ctx: task, secure=secure, clip=True)
    federated.run_in_process(server, client, num_supernodes=task.num_banks)
    return log, task


def reference_fedavg(clipping_norm: float, rounds: int = ROUNDS, expect_clipping: bool = False):
    """Plain numpy FedAvg: the unweighted mean of each bank's update, each update clipped to
    `clipping_norm` over all arrays together (Flower's FlatClip). Returns the arrays after every round."""
    task = TinyTask()
    arrays, history = task.initial_arrays(), []
    for server_round in range(1, rounds + 1):
        updates = []
        for pid in range(task.num_banks):
            new = task.local_update(pid, [a.copy() for a in arrays], server_round)
            update = [n - a for n, a in zip(new, arrays)]
            norm = np.linalg.norm(flat(update))
            if expect_clipping:  # otherwise the clipping test below would prove nothing
                assert norm > clipping_norm, f"bank {pid} round {server_round}: update {norm:.3f} is not clipped"
            updates.append([u * min(1.0, clipping_norm / norm) for u in update])
        arrays = [a + np.mean([u[i] for u in updates], axis=0) for i, a in enumerate(arrays)]
        history.append(arrays)
    return history


@pytest.fixture(scope="module")
def unclipped_runs():
    # Both runs once for the module: secure=True and secure=False with a bound that never binds.
    return {secure: run_consortium(secure, NO_CLIP) for secure in (True, False)}


# ---------------------------------------------------------------------------------------------
# 1. SecAgg+ gives the same model as plain FedAvg, while the server sees only the sum
# ---------------------------------------------------------------------------------------------

def test_secure_and_plain_runs_reach_the_same_model(unclipped_runs):
    (secure_log, _), (plain_log, _) = unclipped_runs[True], unclipped_runs[False]
    assert [r["round"] for r in secure_log.rounds] == list(range(1, ROUNDS + 1))
    assert [r["round"] for r in plain_log.rounds] == list(range(1, ROUNDS + 1))
    for s, p in zip(secure_log.arrays, plain_log.arrays):
        assert s.shape == p.shape
        np.testing.assert_allclose(s, p, atol=SECAGG_TOL, rtol=0)
    # The model did move: agreeing on the initial arrays would prove nothing.
    assert np.linalg.norm(flat(plain_log.arrays) - flat(TinyTask().initial_arrays())) > 0.1


@pytest.mark.parametrize("secure", [True, False])
def test_runs_match_a_numpy_fedavg_loop(unclipped_runs, secure):
    log, task = unclipped_runs[secure]
    expected = reference_fedavg(NO_CLIP)
    # Every round, not only the last: an error that cancels out later would still show.
    assert len(task.history) == ROUNDS
    for got, want in zip(task.history, expected):
        np.testing.assert_allclose(flat(got), flat(want), atol=SECAGG_TOL, rtol=0)
    np.testing.assert_allclose(flat(log.arrays), flat(expected[-1]), atol=SECAGG_TOL, rtol=0)
    # The metric the server logged is task.evaluate on the same arrays.
    assert log.rounds[-1]["norm"] == pytest.approx(np.linalg.norm(flat(log.arrays)))


def test_server_sees_one_aggregate_with_secagg_and_every_update_without(unclipped_runs):
    (secure_log, _), (plain_log, _) = unclipped_runs[True], unclipped_runs[False]
    assert [s["round"] for s in secure_log.server_saw] == list(range(1, ROUNDS + 1))
    for seen in secure_log.server_saw:
        # All four banks answered, but each result carries the same (summed) arrays...
        assert seen["results"] == 4 and seen["distinct_updates"] == 1
        # ...so there is no single update whose norm the server could check.
        assert seen["update_norms"] == []
    for seen in plain_log.server_saw:
        assert seen["results"] == 4 and seen["distinct_updates"] == 4
        assert len(seen["update_norms"]) == 4 and all(n > 0 for n in seen["update_norms"])


# ---------------------------------------------------------------------------------------------
# 2. The norm bound is enforced on the clients, before masking
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("secure", [True, False])
def test_client_side_clipping_bounds_each_round(secure):
    log, task = run_consortium(secure, SMALL_CLIP)
    expected = reference_fedavg(SMALL_CLIP, expect_clipping=True)
    previous = TinyTask().initial_arrays()
    assert len(task.history) == ROUNDS
    for got, want in zip(task.history, expected):
        # The mean of updates each clipped to the bound moves the model by at most the bound.
        assert np.linalg.norm(flat(got) - flat(previous)) <= SMALL_CLIP + SECAGG_TOL
        # And it is exactly the clipped FedAvg, so the mod clipped each bank's own update.
        np.testing.assert_allclose(flat(got), flat(want), atol=SECAGG_TOL, rtol=0)
        previous = got
    if not secure:
        # Without SecAgg+ the server can check the bound itself: every update sits on it.
        for seen in log.server_saw:
            assert len(seen["update_norms"]) == 4
            assert max(seen["update_norms"]) <= SMALL_CLIP + 1e-6
            assert min(seen["update_norms"]) == pytest.approx(SMALL_CLIP, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# 3. SecAgg+ share counts
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("clients, expected", [(3, (3, 2)), (4, (3, 2)), (5, (5, 3)), (8, (7, 4))])
def test_secagg_shares_odd_count_and_majority_threshold(clients, expected):
    assert secure_federated.secagg_shares(clients) == expected


def test_secagg_shares_refuses_two_clients():
    with pytest.raises(ValueError, match="at least 3 clients") as info:
        secure_federated.secagg_shares(2)
    # The message says why: with two, the sum minus your own update is the other's update.
    assert "each learns the other's update" in str(info.value)


# ---------------------------------------------------------------------------------------------
# 4. FraudTask: splits, privacy plan, determinism, export
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dp_task():
    # One DP task for the module: finding the noise multipliers is the slow part (seconds).
    return FraudTask(num_banks=3, n_per_bank=3000, rounds=2, dp=True, seed=0)


@pytest.fixture(scope="module")
def dp_update(dp_task):
    # One bank's DP-SGD round, twice from the same inputs.
    start = dp_task.initial_arrays()
    return start, dp_task.local_update(1, start, 1), dp_task.local_update(1, start, 1)


def _feature_rows(frame):
    return set(map(tuple, frame[fraud.FEATURES].to_numpy()))


def _assert_no_test_row_in_training(task):
    train_rows = set().union(*(_feature_rows(task.splits[b][0]) for b in task.bank_names))
    for bank in task.bank_names:
        train, test = task.splits[bank]
        assert len(train) > 0 and len(test) > 0
        assert not _feature_rows(test) & train_rows, f"{bank}: a held-out row is also a training row"


def test_splits_are_deduplicated(dp_task):
    assert set(dp_task.splits) == set(dp_task.bank_names)
    _assert_no_test_row_in_training(dp_task)


def test_splits_drop_copied_rows(monkeypatch):
    # The simulator rarely repeats a row, so plant copies: every bank starts with the first bank's
    # first 300 rows (copies across banks), and its last 100 rows repeat its rows 300..399.
    real = fraud.simulate_bank
    first = fraud.banks(3)[0]

    def with_copies(bank, n, seed=0):
        own, donor = real(bank, n, seed=seed), real(first, n, seed=seed)
        return pd.concat([donor.iloc[:300], own.iloc[300:n - 100], own.iloc[300:400]], ignore_index=True)

    monkeypatch.setattr(fraud_task.fraud, "simulate_bank", with_copies)
    task = FraudTask(num_banks=3, n_per_bank=3000, seed=0)
    _assert_no_test_row_in_training(task)
    kept = sum(len(train) + len(test) for train, test in task.splits.values())
    assert kept < 3 * 3000, "no planted copy was dropped from the held-out rows"


def test_epsilon_spent_stays_within_the_planned_budget(dp_task):
    # noise_for_budget picks each bank's noise so that all planned rounds spend the budget:
    # not more, and not so little that most of it is wasted. (Each accountant call costs ~0.2 s.)
    target = dp_task.target_epsilon
    for bank in dp_task.bank_names:
        assert dp_task.noise[bank] > 0
        assert 0.5 * target < dp_task.epsilon_spent(bank) <= target * 1.01
    # Composition: more rounds, more epsilon; running past the plan overspends.
    bank = dp_task.bank_names[0]
    planned, overrun = dp_task.epsilon_spent(bank), dp_task.epsilon_spent(bank, rounds=2 * dp_task.rounds)
    assert dp_task.epsilon_spent(bank, rounds=1) < planned < overrun
    assert overrun > target


def test_epsilon_without_dp_is_infinite():
    task = FraudTask(num_banks=3, n_per_bank=3000, rounds=2, dp=False)
    assert all(task.epsilon_spent(b) == math.inf for b in task.bank_names)
    assert task.epsilon_spent(task.bank_names[0], rounds=1) == math.inf


def test_local_update_is_deterministic(dp_update):
    start, first, second = dp_update
    assert [a.shape for a in first] == [a.shape for a in start]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)  # bit for bit, DP noise included
    assert not all(np.array_equal(a, s) for a, s in zip(first, start)), "the update did not train"


def test_export_serves_the_same_probabilities(dp_task, dp_update):
    _, arrays, _ = dp_update
    model = dp_task.export(arrays)
    assert isinstance(model, FraudModel)
    # Held-out rows and training rows, including some frauds (the rare class).
    test = dp_task.test_frame
    rows = pd.concat([test.head(5), test[test["is_fraud"] == 1].head(3),
                      dp_task.train_frame(dp_task.bank_names[2]).head(4)], ignore_index=True)
    served = model.predict_proba(rows)
    assert served.shape == (len(rows), 2)
    np.testing.assert_allclose(served[:, 1], dp_task.scores(arrays, rows), atol=1e-5, rtol=0)
    np.testing.assert_allclose(served.sum(1), 1.0, atol=1e-12)


def test_set_training_rejects_unknown_banks():
    task = FraudTask(num_banks=3, n_per_bank=3000)
    frame = pd.DataFrame({c: [0] for c in fraud.FEATURES + ["is_fraud"]})
    with pytest.raises(ValueError, match="unknown bank") as info:
        task.set_training({"not-a-bank": frame, task.bank_names[0]: frame})
    message = str(info.value)
    assert "not-a-bank" in message and all(name in message for name in task.bank_names)
    assert task.training is None  # nothing was replaced
