"""Federated learning on Flower: clients that train (honestly or not), a server that aggregates with
Flower's strategies or FoolsGold, an audit trail of what each defence did to whom, and three ways
to run the very same `ClientApp` / `ServerApp`:

    task = SpamTask(...)                                   # any object with the FederatedTask methods
    client_app = federated.make_client_app(lambda ctx: task)
    server_app = federated.make_server_app(lambda ctx: task, strategy_fn, num_rounds=10)
    federated.run_in_process(server_app, client_app, num_supernodes=8)     # no Ray: the sweeps
    federated.run_simulation_engine(server_app, client_app, num_supernodes=8)  # Flower + Ray
    # deployment engine: flower-superlink, flower-supernode ..., flwr run (see README)

`run_in_process` drives Flower's own `Strategy.start` loop through `InProcessGrid`, a `flwr`
`Grid` that hands each message to the `ClientApp` in this process (a copy of the content, as a
network would): the strategies' `configure_train` / `aggregate_train` run on real Flower
`Message`s, only the transport differs. Nothing here is tied to text: the task supplies the model,
each client's data and role, and the server-side evaluation (the capstone lab reuses it).

Attacks (client side): a backdoor client trains on its data plus triggered, relabelled copies;
model replacement (Bagdasaryan et al. 2020) scales its update by `boost`; sybils are several
clients the attacker runs on the same poisoned data. Defences (server side): Flower's FedAvg,
Krum / MultiKrum, FedTrimmedAvg, FedMedian, DifferentialPrivacyServerSideFixedClipping (noise 0 =
a norm bound; small noise = weak DP, Sun et al. 2019), `NormClipAvg` (norm-bound clipping with a
pluggable clip function, so a learner's own clipping runs inside a Flower strategy), and
`FoolsGold` (Fung et al. 2020), written here as a Flower strategy.
"""
from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.serverapp.strategy.multikrum import select_multikrum


__all__ = ["dirichlet_partition", "ClientData", "local_train", "make_client_app", "make_server_app",
           "InProcessGrid", "run_in_process", "run_simulation_engine", "FoolsGold", "NormClipAvg",
           "clip_update_reference", "foolsgold_weights", "AuditedStrategy", "build_strategy", "DEFENCES",
           "flat", "update_norm", "quiet_flower", "common_settings", "audit_summary", "RunLog"]

HONEST, BACKDOOR, REPLACEMENT, SYBIL = "honest", "backdoor", "replacement", "sybil"
ROLES = (HONEST, BACKDOOR, REPLACEMENT, SYBIL)


def quiet_flower(level: int = logging.WARNING) -> None:
    """Flower logs every round at INFO; keep a notebook readable."""
    logging.getLogger("flwr").setLevel(level)


# ---------------------------------------------------------------------------------------------
# Data: a non-IID split over clients
# ---------------------------------------------------------------------------------------------

def dirichlet_partition(labels, num_clients: int, alpha: float, seed: int = 0, min_size: int = 10,
                        max_tries: int = 100) -> list[np.ndarray]:
    """Split example indices over `num_clients` with label skew: for each class, the shares of the
    clients are drawn from Dirichlet(alpha, ..., alpha) (small alpha: each client sees mostly one
    class; large alpha: close to IID). Every example goes to exactly one client. Draws again until
    every client holds at least `min_size` examples. Returns one sorted index array per client."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids; got shape {labels.shape}.")
    if num_clients < 1 or int(num_clients) != num_clients:
        raise ValueError(f"num_clients must be a positive whole number; got {num_clients}.")
    if not alpha > 0:
        raise ValueError(f"alpha is the Dirichlet concentration and must be > 0; got {alpha}.")
    if min_size * num_clients > len(labels):
        raise ValueError(f"{len(labels)} examples cannot give {num_clients} clients {min_size} each: "
                         "lower min_size or the number of clients.")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"no Dirichlet draw in {max_tries} tries gave every client {min_size} examples at "
                     f"alpha = {alpha}: raise alpha or lower min_size.")


# ---------------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------------

@dataclass
class ClientData:
    """What one client trains on, and how it behaves. `role` and `boost` are the experiment's
    ground truth (the server never sees them): an honest client sends its trained weights; a
    `replacement` client sends global + boost * (trained - global)."""

    x: torch.Tensor
    y: torch.Tensor
    role: str = HONEST
    boost: float = 1.0

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}; got {self.role!r}.")
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels.")
        if len(self.y) == 0:
            raise ValueError("a client needs at least one training example.")


def local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 1, batch_size: int = 32,
                lr: float = 0.1, seed: int = 0) -> dict:
    """Plain local SGD on cross-entropy (no optimizer state survives a round, as in FedAvg). The batch
    order is fixed by `seed`, so a client's update depends only on the global model, its data and
    seed. Returns the mean training loss of the last epoch."""
    generator = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        total, seen = 0.0, 0
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
    model.eval()
    return {"loss": total / max(seen, 1)}


class single_thread:
    """Tiny models train fastest on one thread (and do not fight other jobs for the cores)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        return False


def client_seed(seed: int, partition_id: int, server_round: int) -> int:
    return int(seed) * 1_000_003 + int(partition_id) * 1_009 + int(server_round)


def make_client_app(get_task: Callable[[Context], object]) -> ClientApp:
    """The `ClientApp`: load the global arrays, train on this node's data, reply with the new arrays
    (scaled for a replacement client), the example count and this node's partition id.

    `get_task(context)` returns the task (model, data, training settings); the node's data is
    `task.client_data(partition_id, num_partitions, server_round)` with the ids from `context.node_config`, as Flower's
    simulation and deployment engines set it (`--node-config "partition-id=0 num-partitions=8"`)."""
    app = ClientApp()

    @app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        task = get_task(context)
        pid = int(context.node_config["partition-id"])
        n_parts = int(context.node_config["num-partitions"])
        server_round = int(msg.content["config"]["server-round"])
        data = task.client_data(pid, n_parts, server_round)
        model = task.model()
        global_state = msg.content["arrays"].to_torch_state_dict()
        model.load_state_dict(global_state)
        with single_thread():
            stats = local_train(model, data.x, data.y, epochs=task.local_epochs, batch_size=task.batch_size,
                                lr=task.lr, seed=client_seed(task.seed, pid, server_round))
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if data.boost != 1.0:
            state = {k: global_state[k] + data.boost * (state[k] - global_state[k]) for k in state}
        content = RecordDict({
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord({"num-examples": len(data.y), "train-loss": float(stats["loss"])}),
            "client": ConfigRecord({"partition-id": pid}),
        })
        return Message(content=content, reply_to=msg)

    return app


# ---------------------------------------------------------------------------------------------
# Server side: strategies
# ---------------------------------------------------------------------------------------------

def flat(arrays) -> np.ndarray:
    """One vector from an ArrayRecord or a list of arrays (the whole model, all layers)."""
    if isinstance(arrays, ArrayRecord):
        arrays = arrays.to_numpy_ndarrays()
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def update_norm(new, reference) -> float:
    """L2 norm of the whole update new - reference, over all layers together."""
    return float(np.linalg.norm(flat(new) - flat(reference)))


def clip_update_reference(global_weights: list[np.ndarray], client_weights: list[np.ndarray],
                          bound: float) -> list[np.ndarray]:
    """Norm-bound clipping of one client's contribution: the update u = client - global, over all
    layers together, is scaled by min(1, bound / ||u||); returns global + clipped update. Small
    updates are left alone, the inputs are not changed."""
    update = [np.asarray(c, dtype=np.float64) - np.asarray(g, dtype=np.float64)
              for g, c in zip(global_weights, client_weights)]
    norm = float(np.sqrt(sum(float((u ** 2).sum()) for u in update)))
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return [(np.asarray(g, dtype=np.float64) + scale * u).astype(np.asarray(c).dtype)
            for g, u, c in zip(global_weights, update, client_weights)]


def _replace_arrays(reply: Message, arrays: list[np.ndarray]) -> None:
    key = next(iter(reply.content.array_records.keys()))
    names = list(reply.content[key].keys())
    reply.content[key] = ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(names, arrays)})


class NormClipAvg(FedAvg):
    """FedAvg over clipped contributions: each client's whole update is bounded in L2 norm by
    `clip_fn(global_weights, client_weights, bound)` (the kit's reference, or a learner's function),
    then Flower's weighted FedAvg runs on the clipped weights. With the reference it gives the same
    aggregate as Flower's DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=0)."""

    def __init__(self, bound: float, clip_fn: Callable | None = None, **kwargs):
        super().__init__(**kwargs)
        if not bound > 0:
            raise ValueError(f"the norm bound must be positive; got {bound}.")
        self.bound = float(bound)
        self.clip_fn = clip_fn or clip_update_reference
        self.current_arrays: ArrayRecord | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        if self.current_arrays is None:
            raise RuntimeError("NormClipAvg.aggregate_train needs the global arrays of the round: call "
                               "configure_train first (Strategy.start does).")
        global_weights = self.current_arrays.to_numpy_ndarrays()
        for reply in replies:
            if reply.has_error():
                continue
            client = next(iter(reply.content.array_records.values())).to_numpy_ndarrays()
            clipped = self.clip_fn([g.copy() for g in global_weights], [c.copy() for c in client], self.bound)
            _replace_arrays(reply, [np.asarray(c, dtype=g.dtype) for c, g in zip(clipped, client)])
        return super().aggregate_train(server_round, replies)


def foolsgold_weights(history: np.ndarray, confidence: float = 1.0, logit: bool = True) -> np.ndarray:
    """FoolsGold's weights (Fung, Yoon and Beschastnikh 2020, Algorithm 1) from each client's
    summed historical update (one row per client): pairwise cosine similarity, pardoning (a client
    less similar to the others than its partner is not punished for the partner's similarity),
    1 - max similarity, rescaled so the largest weight is 1, then the logit squashing
    confidence * (ln(w / (1 - w)) + 0.5) clipped to [0, 1].
    logit=False skips that last squashing and keeps the rescaled 1 - max similarity: the squashing
    zeroes every client whose rescaled weight is below 0.38, which on a two-class task with
    look-alike honest clients can leave one honest client training the model alone."""
    h = np.asarray(history, dtype=np.float64)
    n = len(h)
    if n == 1:
        return np.ones(1)
    norms = np.linalg.norm(h, axis=1)
    unit = h / np.where(norms > 0, norms, 1.0)[:, None]
    cs = unit @ unit.T - np.eye(n)
    maxcs = cs.max(axis=1)
    for i in range(n):  # pardoning
        for j in range(n):
            if i != j and maxcs[i] < maxcs[j] and maxcs[j] > 0:
                cs[i, j] *= maxcs[i] / maxcs[j]
    wv = np.clip(1.0 - cs.max(axis=1), 0.0, 1.0)
    if wv.max() <= 0:
        return np.zeros(n)
    wv = wv / wv.max()
    wv[wv == 1.0] = 0.99
    if not logit:
        return wv
    with np.errstate(divide="ignore"):
        wv = confidence * (np.log(wv / (1.0 - wv)) + 0.5)
    wv[np.isinf(wv) & (wv > 0)] = 1.0
    return np.clip(np.nan_to_num(wv, nan=0.0, neginf=0.0), 0.0, 1.0)


class FoolsGold(FedAvg):
    """FoolsGold (Fung et al. 2020) as a Flower strategy. The server keeps, per client (Flower node
    id), the sum of all updates it ever sent; clients whose histories point the same way (sybils
    pushing one goal) get low weights. The new global model is global + sum_i w_i u_i / sum_i w_i
    (the original code adds the weighted sum of gradients times a learning rate; normalising keeps
    FedAvg's step size). When every weight is 0 the global model stays as it was.
    `last_weights` maps node id -> weight of the latest round (for the audit trail)."""

    def __init__(self, confidence: float = 1.0, logit: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.confidence = confidence
        self.logit = logit
        self.history: dict[int, np.ndarray] = {}
        self.last_weights: dict[int, float] = {}
        self.current_arrays: ArrayRecord | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid:
            return None, None
        if self.current_arrays is None:
            raise RuntimeError("FoolsGold.aggregate_train needs the global arrays of the round: call "
                               "configure_train first (Strategy.start does).")
        global_weights = self.current_arrays.to_numpy_ndarrays()
        g_flat = flat(global_weights)
        updates, nodes = [], []
        for msg in valid:
            node = int(msg.metadata.src_node_id)
            u = flat(next(iter(msg.content.array_records.values()))) - g_flat
            self.history[node] = self.history.get(node, 0.0) + u
            updates.append(u)
            nodes.append(node)
        weights = foolsgold_weights(np.stack([self.history[n] for n in nodes]), self.confidence, self.logit)
        self.last_weights = dict(zip(nodes, weights.tolist()))
        step = (weights[:, None] * np.stack(updates)).sum(0) / weights.sum() if weights.sum() > 0 else 0.0 * g_flat
        new_flat, out, at = g_flat + step, {}, 0
        for key, g in zip(self.current_arrays.keys(), global_weights):
            out[key] = Array(new_flat[at:at + g.size].reshape(g.shape).astype(g.dtype))
            at += g.size
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return ArrayRecord(out), metrics


def common_settings(num_clients: int) -> dict:
    """Strategy settings of the labs: all `num_clients` nodes train in every round; no client-side
    evaluation (the server evaluates the global model)."""
    return dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_clients,
                min_available_nodes=num_clients)


DEFENCES = ("fedavg", "norm_clip", "flower_clip", "weak_dp", "krum", "multikrum", "trimmed_mean", "median",
            "foolsgold", "foolsgold_linear")


def build_strategy(defence: str, num_clients: int, *, clip_bound: float = 1.0, dp_noise: float = 0.01,
                   num_malicious: int = 1, trim_beta: float = 0.2, clip_fn: Callable | None = None) -> Strategy:
    """One of Flower's strategies (or the kit's FoolsGold / NormClipAvg), every client sampled in
    every round, no client-side evaluation (the server evaluates the global model itself)."""
    common = common_settings(num_clients)
    if defence == "fedavg":
        return FedAvg(**common)
    if defence == "norm_clip":
        return NormClipAvg(clip_bound, clip_fn=clip_fn, **common)
    if defence in ("flower_clip", "weak_dp"):
        noise = 0.0 if defence == "flower_clip" else dp_noise
        return DifferentialPrivacyServerSideFixedClipping(FedAvg(**common), noise_multiplier=noise,
                                                          clipping_norm=clip_bound, num_sampled_clients=num_clients)
    if defence == "krum":
        return Krum(num_malicious_nodes=num_malicious, **common)
    if defence == "multikrum":
        return MultiKrum(num_malicious_nodes=num_malicious, num_nodes_to_select=max(1, num_clients - num_malicious),
                         **common)
    if defence == "trimmed_mean":
        return FedTrimmedAvg(beta=trim_beta, **common)
    if defence == "median":
        return FedMedian(**common)
    if defence == "foolsgold":
        return FoolsGold(**common)
    if defence == "foolsgold_linear":  # FoolsGold without the logit squashing of its weights
        return FoolsGold(logit=False, **common)
    raise ValueError(f"unknown defence {defence!r}; choose one of {', '.join(DEFENCES)}.")


# ---------------------------------------------------------------------------------------------
# Audit trail: what each defence did to each client in each round
# ---------------------------------------------------------------------------------------------

@dataclass
class AuditRow:
    round: int
    partition: int
    node: int
    role: str
    norm: float
    factor: float   # the client's weight relative to plain FedAvg (1 = untouched, 0 = rejected)
    action: str     # kept / clipped / down-weighted / rejected

    @property
    def excluded(self) -> bool:
        """Rejected, or down-weighted to less than half of its FedAvg weight."""
        return self.factor < 0.5


class AuditedStrategy(Strategy):
    """Wraps a strategy and records, per round and client, the update norm and what the defence did
    with the client (Krum's selection, the clipping factor, FoolsGold's weight). `roles` maps
    partition id -> role: the experiment's ground truth, used only to score the audit.
    Coordinate-wise rules (median, trimmed mean) drop values, not clients: they are logged as kept."""

    def __init__(self, inner: Strategy, roles: dict[int, str], rows: list | None = None):
        super().__init__()
        self.inner, self.roles = inner, roles
        self.rows: list[AuditRow] = rows if rows is not None else []
        self.current_arrays: ArrayRecord | None = None

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round, arrays, config, grid):
        self.current_arrays = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)

    def aggregate_train(self, server_round, replies):
        replies = [r for r in replies if not r.has_error()]
        inner = self.inner
        base = inner.strategy if isinstance(inner, DifferentialPrivacyServerSideFixedClipping) else inner
        g = self.current_arrays
        info = []
        for msg in replies:
            pid = int(msg.content["client"]["partition-id"])
            info.append((msg, pid, update_norm(next(iter(msg.content.array_records.values())), g)))
        selected = None
        if isinstance(base, MultiKrum):  # Krum too; select_multikrum only reads the replies
            chosen = select_multikrum([m.content for m, _, _ in info], base.num_malicious_nodes,
                                      base.num_nodes_to_select)
            selected = {id(c) for c in chosen}
        bound = getattr(inner, "clipping_norm", None) or getattr(inner, "bound", None)
        result = inner.aggregate_train(server_round, replies)
        for msg, pid, norm in info:
            factor, action = 1.0, "kept"
            if selected is not None and id(msg.content) not in selected:
                factor, action = 0.0, "rejected"
            elif bound is not None and norm > bound:
                factor, action = bound / norm, "clipped"
            elif isinstance(base, FoolsGold):
                factor = float(base.last_weights.get(int(msg.metadata.src_node_id), 1.0))
                action = "rejected" if factor <= 0 else ("down-weighted" if factor < 1 else "kept")
            self.rows.append(AuditRow(server_round, pid, int(msg.metadata.src_node_id), self.roles.get(pid, "?"),
                                      norm, factor, action))
        return result


def audit_summary(rows: list[AuditRow]) -> dict:
    """Shares over client-rounds: malicious ones excluded (rejected or weight < half), honest ones
    excluded (false exclusions), and malicious / honest ones touched at all (clipped, down-weighted)."""
    bad = [r for r in rows if r.role != HONEST]
    good = [r for r in rows if r.role == HONEST]

    def share(group, test):
        return float(np.mean([test(r) for r in group])) if group else float("nan")

    return {"malicious_excluded": share(bad, lambda r: r.excluded),
            "malicious_touched": share(bad, lambda r: r.action != "kept"),
            "honest_excluded": share(good, lambda r: r.excluded),
            "honest_touched": share(good, lambda r: r.action != "kept")}


# ---------------------------------------------------------------------------------------------
# The ServerApp
# ---------------------------------------------------------------------------------------------

@dataclass
class RunLog:
    """What a server run leaves behind: per-round server-side metrics, the audit trail, the final arrays."""

    metrics: list[dict] = field(default_factory=list)
    audit: list[AuditRow] = field(default_factory=list)
    arrays: ArrayRecord | None = None
    seconds: float = 0.0


def make_server_app(get_task: Callable[[Context], object], strategy_fn: Callable[[Context, object], Strategy],
                    num_rounds: int | None = None, log: RunLog | None = None) -> ServerApp:
    """The `ServerApp`: builds the task's model, wraps `strategy_fn(context, task)` in the audit,
    and runs Flower's `Strategy.start` for `num_rounds` (or the run config's `num-server-rounds`),
    evaluating the global model on the server after every round with `task.evaluate(model)`.
    Results land in `log` (a RunLog), which the caller keeps."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        task = get_task(context)
        rounds = int(num_rounds if num_rounds is not None else context.run_config.get("num-server-rounds", 3))
        run_log = log if log is not None else RunLog()
        strategy = AuditedStrategy(strategy_fn(context, task), task.roles(), run_log.audit)
        model = task.model()

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            metrics = {k: float(v) for k, v in task.evaluate(model).items()}
            run_log.metrics.append({"round": server_round, **metrics})
            return MetricRecord(metrics)

        t0 = time.perf_counter()
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds,
                                train_config=ConfigRecord({"seed": int(task.seed)}), evaluate_fn=evaluate)
        run_log.arrays = result.arrays
        run_log.seconds = time.perf_counter() - t0

    return app


# ---------------------------------------------------------------------------------------------
# Running the apps: in this process (no Ray), or on Flower's simulation engine (Ray)
# ---------------------------------------------------------------------------------------------

class InProcessGrid(Grid):
    """A Flower `Grid` whose nodes live in this process: each message goes (as a copy, the way a
    network would deliver it) to `client_app(message, context)` of its destination node, and the
    reply comes back with Flower's metadata. Node i gets node_config {"partition-id": i,
    "num-partitions": n}, as in Flower's simulation engine."""

    def __init__(self, client_app: ClientApp, num_supernodes: int, run_config: dict | None = None, seed: int = 0):
        from flwr.supercore.run import Run

        rng = np.random.default_rng(seed)
        self.client_app = client_app
        self.node_ids = [int(v) for v in rng.choice(2**62, size=num_supernodes, replace=False)]
        self.contexts = {node: Context(run_id=1, node_id=node,
                                       node_config={"partition-id": i, "num-partitions": num_supernodes},
                                       state=RecordDict(), run_config=dict(run_config or {}))
                         for i, node in enumerate(self.node_ids)}
        self._run = Run.create_empty(1) if hasattr(Run, "create_empty") else None
        self._replies: dict[str, Message] = {}

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self.contexts:
                raise ValueError(f"message for unknown node {node}; the grid has nodes {self.node_ids}.")
            msg.metadata.__dict__["_run_id"] = 1
            msg.metadata.__dict__["_src_node_id"] = 0
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            delivered = Message(content=copy.deepcopy(msg.content), dst_node_id=node,
                                message_type=msg.metadata.message_type, group_id=msg.metadata.group_id)
            delivered.metadata.__dict__["_run_id"] = 1
            delivered.metadata.__dict__["_src_node_id"] = 0
            delivered.metadata.__dict__["_message_id"] = msg.metadata.message_id
            reply = self.client_app(delivered, self.contexts[node])
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


def run_in_process(server_app: ServerApp, client_app: ClientApp, num_supernodes: int,
                   run_config: dict | None = None, seed: int = 0) -> None:
    """Run the ServerApp against `num_supernodes` in-process nodes (no Ray, no network)."""
    quiet_flower()
    grid = InProcessGrid(client_app, num_supernodes, run_config, seed)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config or {}))
    with single_thread():
        server_app(grid, context)


def run_simulation_engine(server_app: ServerApp, client_app: ClientApp, num_supernodes: int,
                          num_cpus: int = 2) -> float:
    """Run the same apps on Flower's simulation engine (Ray), one CPU per client and `num_cpus` for
    Ray in all (Ray's default of 2 CPUs per client would run one client at a time on 2 cores).
    Returns the wall time in seconds, Ray's start-up included."""
    from flwr.simulation import run_simulation

    quiet_flower()
    t0 = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_supernodes,
                   backend_config={"client_resources": {"num_cpus": 1},
                                   "init_args": {"num_cpus": num_cpus, "include_dashboard": False,
                                                 "log_to_driver": False}})
    return time.perf_counter() - t0
