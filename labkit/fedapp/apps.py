"""The Flower app of lab 06 for Flower's deployment engine: `flwr run labkit/fedapp <superlink>` ships
it to a SuperLink, which runs `server_app`; every SuperNode runs `client_app`. Each node rebuilds the
same `SpamTask` from the run config (pyproject.toml's [tool.flwr.app.config], overridden with
`flwr run --run-config`), so the data split, the attacker and the defence agree across machines. The
server prints the global model's main accuracy and backdoor success after every round, then the
audit summary."""
from __future__ import annotations

import functools

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .. import federated
from .task import SpamTask

_SERVER_KEYS = ("defence", "clip-bound", "dp-noise", "num-server-rounds")


@functools.lru_cache(maxsize=8)
def _task(items: tuple) -> SpamTask:
    return SpamTask.from_run_config(dict(items))


def get_task(context: Context) -> SpamTask:
    """The run's task, built once per process from the run config (server-only keys left out)."""
    return _task(tuple(sorted((k, v) for k, v in context.run_config.items() if k not in _SERVER_KEYS)))


def strategy_from_config(context: Context, task: SpamTask):
    cfg = context.run_config
    return federated.build_strategy(str(cfg.get("defence", "fedavg")), task.num_clients,
                                    clip_bound=float(cfg.get("clip-bound", 1.0)),
                                    dp_noise=float(cfg.get("dp-noise", 0.01)),
                                    num_malicious=max(1, len(task.malicious)))


client_app = federated.make_client_app(get_task)
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    log = federated.RunLog()
    federated.make_server_app(get_task, strategy_from_config, log=log)(grid, context)
    for row in log.metrics:
        print(f"labkit-fedapp round {row['round']}: main accuracy {row['main_accuracy']:.3f}, "
              f"backdoor success {row['backdoor_success']:.3f}", flush=True)
    summary = federated.audit_summary(log.audit)
    print("labkit-fedapp audit: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()), flush=True)
    print(f"labkit-fedapp done in {log.seconds:.1f} s", flush=True)
