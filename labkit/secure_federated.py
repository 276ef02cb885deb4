"""Federated training the server cannot look into: Flower's SecAgg+ with norm bounds on the clients.

    log = secure_federated.ConsortiumLog()
    server_app = secure_federated.make_consortium_server_app(lambda ctx: task, num_rounds=20,
                                                             secure=True, clipping_norm=2.0, log=log)
    client_app = secure_federated.make_bank_client_app(lambda ctx: task, secure=True, clip=True)
    federated.run_in_process(server_app, client_app, num_supernodes=task.num_banks)   # or run_simulation_engine
    log.arrays, log.rounds, log.server_saw

Secure aggregation (Flower's `SecAggPlusWorkflow` on the server, `secaggplus_mod` on each client;
Bell et al. 2020): each bank masks its model with pairwise masks that cancel in the sum, so the
server learns the sum of the banks' models and nothing about any one of them. The server's
strategy then receives the *aggregate only* (every result carries the same arrays): `server_saw`
records how many distinct updates it could see (1 with SecAgg+, one per bank without).

That is the tension lab 06 named: a server that cannot see single updates cannot clip, score or
exclude them. So the norm bound moves to the clients: Flower's
`DifferentialPrivacyClientSideFixedClipping` sends the bound, `fixedclipping_mod` clips each
bank's update before it is masked. (With a noise multiplier above 0 the same wrapper adds
central Gaussian noise to the sum: bank-level DP; the capstone instead protects each bank's
records with DP-SGD inside the bank, see `fraud_task`.) A bank that skips the mod is not caught:
the bound holds only for clients that run the code they were given.

Every bank sends weight 1 (SecAgg+'s `max_weight` is 1), so the secure sum is an unweighted
mean, the same number plain FedAvg gives: the capstone measures the two against each other.
The task object supplies `num_banks`, `initial_arrays()`, `local_update(pid, arrays, round)` and
`evaluate(arrays)` (see `fraud_task.FraudTask`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

__all__ = ["ConsortiumLog", "make_bank_client_app", "make_consortium_server_app", "secagg_shares", "train_consortium"]


@dataclass
class ConsortiumLog:
    """What one run leaves behind: per-round metrics, what the server saw, the final arrays."""

    rounds: list[dict] = field(default_factory=list)
    server_saw: list[dict] = field(default_factory=list)
    arrays: list | None = None
    history: list[list] = field(default_factory=list)  # the global arrays after every round
    seconds: float = 0.0


class _Bank(NumPyClient):
    def __init__(self, task, partition_id: int):
        self.task, self.partition_id = task, partition_id

    def fit(self, parameters, config):
        arrays = self.task.local_update(self.partition_id, parameters, int(config["server-round"]))
        return arrays, 1, {}  # weight 1: the secure sum is an unweighted mean


def make_bank_client_app(get_task: Callable[[Context], object], *, secure: bool = True, clip: bool = True) -> ClientApp:
    """Each bank's `ClientApp`: local training on its own rows; with `clip`, Flower's
    `fixedclipping_mod` bounds the update's norm; with `secure`, `secaggplus_mod` masks it (the
    clipping runs first: mods wrap outside-in, and SecAgg+ must mask the clipped update)."""
    mods = ([secaggplus_mod] if secure else []) + ([fixedclipping_mod] if clip else [])

    def client_fn(context: Context):
        return _Bank(get_task(context), int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=mods)


class _ObservedFedAvg(FedAvg):
    """FedAvg that writes down what reached the server: how many results, how many distinct
    model vectors among them and, when it can see them, each update's norm."""

    def __init__(self, log: ConsortiumLog, **kwargs):
        super().__init__(**kwargs)
        self.log = log
        self.current = None

    def configure_fit(self, server_round, parameters, client_manager):
        self.current = np.concatenate([a.ravel() for a in parameters_to_ndarrays(parameters)])
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        vectors = [np.concatenate([a.ravel() for a in parameters_to_ndarrays(r.parameters)]) for _, r in results]
        distinct = len({v.tobytes() for v in vectors})
        norms = sorted(float(np.linalg.norm(v - self.current)) for v in vectors) if distinct > 1 else []
        self.log.server_saw.append({"round": server_round, "results": len(results), "distinct_updates": distinct,
                                    "update_norms": norms})
        return super().aggregate_fit(server_round, results, failures)


def secagg_shares(num_clients: int) -> tuple[int, int]:
    """SecAgg+ shares per secret and the reconstruction threshold: an odd share count (Flower's
    advice) over all banks, and a majority of those shares to rebuild a dropped bank's mask."""
    if num_clients < 3:
        raise ValueError(f"SecAgg+ needs at least 3 clients (got {num_clients}): with 2, each learns the other's "
                         "update from the sum.")
    shares = num_clients if num_clients % 2 else num_clients - 1
    return shares, shares // 2 + 1


def make_consortium_server_app(get_task: Callable[[Context], object], num_rounds: int, *, secure: bool = True,
                               clipping_norm: float | None = None, server_noise: float = 0.0,
                               log: ConsortiumLog | None = None) -> ServerApp:
    """The consortium's `ServerApp`: FedAvg over all banks every round, through SecAgg+ when
    `secure`; with `clipping_norm`, the banks clip their updates (pair with
    `make_bank_client_app(clip=True)`), and `server_noise` > 0 adds central DP noise. After every
    round the global model is scored with `task.evaluate` (the lab's measurement, standing in for
    each bank scoring its own held-out rows)."""
    log = log if log is not None else ConsortiumLog()
    app = ServerApp()

    @app.main()
    def main(grid, context: Context) -> None:
        task = get_task(context)
        n = int(task.num_banks)

        def evaluate(server_round, arrays, config):
            if server_round == 0:
                return None
            metrics = {k: float(v) for k, v in task.evaluate(arrays).items()}
            log.rounds.append({"round": server_round, **metrics})
            log.arrays = [np.array(a, copy=True) for a in arrays]
            log.history.append(log.arrays)
            return None

        strategy = _ObservedFedAvg(log, fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                                   min_available_clients=n, initial_parameters=ndarrays_to_parameters(task.initial_arrays()),
                                   on_fit_config_fn=lambda r: {"server-round": r}, evaluate_fn=evaluate)
        if clipping_norm is not None:
            strategy = DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=server_noise,
                                                                  clipping_norm=clipping_norm, num_sampled_clients=n)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy)
        fit_workflow = None
        if secure:
            shares, threshold = secagg_shares(n)
            fit_workflow = SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=threshold, max_weight=1.0)
        t0 = time.perf_counter()
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
        log.seconds = time.perf_counter() - t0

    return app


def train_consortium(task, frames, num_rounds: int, *, secure: bool, dp: bool, clipping_norm: float | None,
                     engine: str = "in-process"):
    """One federated training of `task`'s banks on `frames` (bank -> training rows): a copy of the task
    with `dp` set, the consortium's apps above, run in this process or on Flower's simulation engine
    ("simulation"). Returns (the task copy, its ConsortiumLog)."""
    import dataclasses

    from . import federated

    if engine not in ("in-process", "simulation"):
        raise ValueError(f"engine must be 'in-process' or 'simulation'; got {engine!r}.")
    run_task = dataclasses.replace(task, dp=dp)
    run_task.set_training(frames)
    log = ConsortiumLog()
    server = make_consortium_server_app(lambda ctx: run_task, num_rounds, secure=secure, clipping_norm=clipping_norm,
                                        log=log)
    client = make_bank_client_app(lambda ctx: run_task, secure=secure, clip=clipping_norm is not None)
    runner = federated.run_simulation_engine if engine == "simulation" else federated.run_in_process
    runner(server, client, run_task.num_banks)
    return run_task, log
