"""labkit.federated on hand-made updates: the Dirichlet partitioner, FoolsGold, norm clipping (ours and
Flower's), the audit trail, and the in-process grid driving Flower's strategy loop."""
import numpy as np
import pytest
import torch

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from labkit import federated

# ---- partitioner ------------------------------------------------------------------------------


def test_dirichlet_partition_uses_every_example_once():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    parts = federated.dirichlet_partition(labels, num_clients=7, alpha=0.5, seed=3, min_size=10)
    together = np.concatenate(parts)
    assert len(parts) == 7 and len(together) == len(labels)
    assert np.array_equal(np.sort(together), np.arange(len(labels)))
    assert min(len(p) for p in parts) >= 10
    again = federated.dirichlet_partition(labels, num_clients=7, alpha=0.5, seed=3, min_size=10)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def _skew(labels, parts):
    """Mean over clients of the total-variation distance between its label mix and the global mix."""
    overall = np.bincount(labels) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=len(overall)) / len(p) - overall).sum()
                          for p in parts]))


def test_dirichlet_partition_is_non_iid_as_configured():
    labels = np.repeat([0, 1], [2000, 2000])
    skewed = _skew(labels, federated.dirichlet_partition(labels, 8, alpha=0.1, seed=0))
    near_iid = _skew(labels, federated.dirichlet_partition(labels, 8, alpha=100.0, seed=0))
    assert skewed > 0.3 and near_iid < 0.05


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_clients=0, alpha=1.0), "num_clients"),
    (dict(num_clients=3, alpha=0.0), "alpha"),
    (dict(num_clients=50, alpha=1.0, min_size=10), "cannot give 50 clients"),
])
def test_dirichlet_partition_bad_input_says_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        federated.dirichlet_partition(np.zeros(100, dtype=int), **kwargs)


# ---- hand-made replies ------------------------------------------------------------------------

GLOBAL = [np.full((3, 4), 0.5, dtype=np.float32), np.full(4, -0.2, dtype=np.float32)]


def _arrays(weights):
    if isinstance(weights, ArrayRecord):
        return weights
    return ArrayRecord({"w": Array(np.asarray(weights[0])), "b": Array(np.asarray(weights[1]))})


def _reply(node: int, weights, n: int = 10, pid: int | None = None) -> Message:
    ins = Message(RecordDict(), dst_node_id=node, message_type="train")
    ins.metadata.__dict__["_src_node_id"] = 0
    ins.metadata.__dict__["_message_id"] = f"m{node}"
    content = RecordDict({"arrays": _arrays([np.asarray(w, dtype=np.float32) for w in weights]),
                          "metrics": MetricRecord({"num-examples": n}),
                          "client": ConfigRecord({"partition-id": node if pid is None else pid})})
    return Message(content=content, reply_to=ins)


def _client(update_flat):
    u = np.asarray(update_flat, dtype=np.float32)
    return [GLOBAL[0] + u[:12].reshape(3, 4), GLOBAL[1] + u[12:]]


def _directions(seed=0, n=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, 16) for _ in range(n)]


def _start(strategy):
    """What Strategy.start does before aggregate_train: tell the strategy the round's global arrays."""
    for s in (strategy, getattr(strategy, "inner", None), getattr(strategy, "strategy", None)):
        if s is not None and hasattr(s, "current_arrays"):
            s.current_arrays = _arrays(GLOBAL)


# ---- FoolsGold ----------------------------------------------------------------------------------


def test_foolsgold_down_weights_a_sybil_pair_and_keeps_diverse_clients():
    honest = _directions(0, 4)
    sybil = np.ones(16)
    rows = np.stack(honest + [sybil, sybil + 0.01 * np.random.default_rng(1).normal(0, 1, 16)])
    w = federated.foolsgold_weights(rows)
    assert w[4] < 0.05 and w[5] < 0.05, w
    assert (w[:4] > 0.9).all(), w


def test_foolsgold_leaves_an_honest_diverse_set_alone():
    w = federated.foolsgold_weights(np.eye(6) + 0.05)
    assert np.allclose(w, 1.0), w


def test_foolsgold_without_the_logit_keeps_look_alike_honest_clients_and_still_zeroes_the_sybils():
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 1, 16)  # two-class task: honest histories point roughly the same way
    honest = [shared + s * rng.normal(0, 1, 16) for s in (0.2, 0.3, 0.5, 0.9)]
    sybil = rng.normal(0, 1, 16)
    rows = np.stack(honest + [sybil, sybil + 0.001 * rng.normal(0, 1, 16)])
    squashed = federated.foolsgold_weights(rows)
    linear = federated.foolsgold_weights(rows, logit=False)
    assert (squashed[:4] == 0).sum() >= 2, squashed  # the logit zeroes the honest clients that look alike
    assert (linear[:4] > 0.05).all() and linear.max() == pytest.approx(0.99), linear
    assert linear[4] < 0.01 and linear[5] < 0.01, linear


def test_foolsgold_linear_is_a_named_defence():
    strategy = federated.build_strategy("foolsgold_linear", 5)
    assert isinstance(strategy, federated.FoolsGold) and strategy.logit is False
    assert federated.build_strategy("foolsgold", 5).logit is True


def test_foolsgold_strategy_aggregates_without_the_sybils():
    honest = [2.0 * np.eye(16)[i] + 0.1 for i in range(4)]  # diverse clients
    sybil = np.full(16, 3.0)
    replies = [_reply(10 + i, _client(u)) for i, u in enumerate(honest)]
    replies += [_reply(20, _client(sybil)), _reply(21, _client(sybil * 1.001))]
    strategy = federated.FoolsGold()
    _start(strategy)
    arrays, _ = strategy.aggregate_train(1, replies)
    got = federated.flat(arrays) - federated.flat(GLOBAL)
    assert np.allclose(got, np.mean(honest, axis=0), atol=1e-5)
    assert strategy.last_weights[20] == 0 and strategy.last_weights[21] == 0
    # the history is kept per node id across rounds
    _start(strategy)
    strategy.aggregate_train(2, [_reply(10, _client(honest[0])), _reply(20, _client(sybil)), _reply(21, _client(sybil))])
    assert np.allclose(strategy.history[20], 2 * sybil, atol=1e-5)


# ---- norm clipping --------------------------------------------------------------------------------


def test_norm_clip_avg_matches_flowers_fixed_clipping_with_noise_zero():
    ups = _directions(4, 4) + [np.full(16, 5.0)]
    ours = federated.NormClipAvg(1.0)
    flower = DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=0.0, clipping_norm=1.0,
                                                        num_sampled_clients=5)
    results = []
    for strategy in (ours, flower):
        _start(strategy)
        strategy.current_arrays = _arrays(GLOBAL)
        arrays, _ = strategy.aggregate_train(1, [_reply(i, _client(u), n=10 + i) for i, u in enumerate(ups)])
        results.append(federated.flat(arrays))
    assert np.allclose(results[0], results[1], atol=1e-6)


def test_clipping_bounds_a_boosted_update_and_leaves_small_ones():
    g = [a.astype(np.float64) for a in GLOBAL]
    big = federated.clip_update_reference(g, _client(np.full(16, 2.0)), 1.0)
    assert abs(federated.update_norm(big, g) - 1.0) < 1e-5
    small_update = np.full(16, 0.01)
    small = federated.clip_update_reference(g, _client(small_update), 1.0)
    assert np.allclose(federated.flat(small) - federated.flat(g), small_update, atol=1e-6)


# ---- audit trail ----------------------------------------------------------------------------------


def test_audit_names_what_each_defence_did():
    ups = _directions(5, 5) + [np.full(16, 6.0)]
    roles = {i: "honest" for i in range(5)} | {5: "replacement"}
    for defence, action in [("krum", "rejected"), ("multikrum", "rejected"), ("norm_clip", "clipped"),
                            ("flower_clip", "clipped")]:
        strategy = federated.AuditedStrategy(federated.build_strategy(defence, 6, clip_bound=2.0 * 4.0), roles)
        strategy.current_arrays = _arrays(GLOBAL)
        _start(strategy)
        arrays, _ = strategy.aggregate_train(1, [_reply(100 + i, _client(u), pid=i) for i, u in enumerate(ups)])
        bad = [r for r in strategy.rows if r.partition == 5][0]
        assert bad.action == action and bad.role == "replacement" and bad.excluded, (defence, bad)
        if defence == "multikrum":
            assert federated.audit_summary(strategy.rows)["honest_excluded"] == 0.0
        if defence == "krum":  # Krum keeps one client: the other honest ones are excluded too
            assert federated.audit_summary(strategy.rows)["honest_excluded"] == 0.8


def test_unknown_defence_lists_the_known_ones():
    with pytest.raises(ValueError, match="foolsgold"):
        federated.build_strategy("bulyan2", 5)


# ---- the in-process grid runs Flower's own Strategy.start loop ----------------------------------


class _ToyTask:
    """Two features, a linear model; client i holds points of its own cluster."""

    seed, local_epochs, batch_size, lr = 0, 1, 8, 0.5

    def __init__(self, n=4):
        self.n = n

    def roles(self):
        return {i: "honest" for i in range(self.n)}

    def model(self):
        torch.manual_seed(0)
        return torch.nn.Linear(2, 2)

    def client_data(self, pid, num, server_round):
        g = torch.Generator().manual_seed(pid)
        x = torch.randn(32, 2, generator=g) + pid
        return federated.ClientData(x, (x.sum(1) > pid * 2).long())

    def evaluate(self, model):
        return {"main_accuracy": 0.5}


def test_in_process_grid_runs_the_server_app_and_replies_come_from_each_node():
    task = _ToyTask()
    log = federated.RunLog()
    server = federated.make_server_app(lambda c: task, lambda c, t: federated.build_strategy("fedavg", task.n), 2, log)
    federated.run_in_process(server, federated.make_client_app(lambda c: task), task.n)
    assert [m["round"] for m in log.metrics] == [0, 1, 2]
    assert sorted({r.partition for r in log.audit}) == [0, 1, 2, 3] and len(log.audit) == 8
    assert len({r.node for r in log.audit}) == 4
    # deterministic: the same run gives the same model
    log2 = federated.RunLog()
    server2 = federated.make_server_app(lambda c: task, lambda c, t: federated.build_strategy("fedavg", task.n), 2, log2)
    federated.run_in_process(server2, federated.make_client_app(lambda c: task), task.n)
    assert np.allclose(federated.flat(log.arrays), federated.flat(log2.arrays), atol=1e-6)


# ---- lab 06's task -----------------------------------------------------------------------------------

def test_spam_task_held_out_sets_are_unseen_and_the_attacker_poisons_its_own_spam():
    from labkit import poisoning
    from labkit.fedapp import SpamTask

    task = SpamTask(num_clients=5, attack="sybil", num_sybils=2, seed=1)
    d = task._data()
    assert not poisoning.seen_in(d["test_spam"], d["texts"]).any()
    assert sorted(np.concatenate(task.partitions).tolist()) == list(range(len(d["labels"])))
    roles = task.roles()
    assert sum(r == "sybil" for r in roles.values()) == 2
    bad = task.client_data(task.malicious[0], 5, server_round=1)
    good = task.client_data([i for i, r in roles.items() if r == "honest"][0], 5, server_round=1)
    assert bad.role == "sybil" and (bad.y == 0).sum() > 0 and len(bad.y) > len(task.partitions[task.malicious[0]])
    assert good.role == "honest" and good.boost == 1.0
    assert all(task.trigger in t for t in d["poison_texts"])
    same = SpamTask.from_run_config({"num-clients": 5, "attack": "sybil", "num-sybils": 2, "seed": 1, "defence": "x"})
    assert same == task


def test_spam_task_bad_settings_say_what_to_change():
    from labkit.fedapp import SpamTask

    with pytest.raises(ValueError, match="attack must be one of"):
        SpamTask(attack="poison")
    with pytest.raises(ValueError, match="num-clients to the number of SuperNodes"):
        SpamTask(num_clients=4, attack="none").client_data(0, 3)
