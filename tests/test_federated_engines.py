"""Lab 06's apps on Flower's deployment engine: a SuperLink and two SuperNodes as separate processes
on 127.0.0.1, driven by `flwr run`, complete a run. (The simulation engine against the in-process
grid, same apps, same global model, is lab 06's `engines_max_diff` target, which nbval checks on
every run of the suite; one Ray start-up is enough.) The test is slow (process start-ups): it runs
under the CPU lock, is bounded by a hard deadline and kills every process it started, whatever happens."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit import federated

BIN = Path(sys.executable).parent
DEADLINE_S = 240  # the whole deployment test, start-ups included


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stop(procs):
    for p in procs:  # each process leads its own group: the SuperLink's and SuperNodes' children go too
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.time() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)


def test_deployment_engine_runs_the_lab_app_on_localhost(tmp_path):
    start = time.time()
    serverappio, fleet, control, node0, node1 = _free_ports(5)
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "lab06"\n\n[superlink.lab06]\naddress = "127.0.0.1:{control}"\ninsecure = true\n')
    # the SuperLink and SuperNodes start flower-superexec and flwr-serverapp / flwr-clientapp from PATH
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    app_dir = tmp_path / "fedapp"
    src = Path(federated.__file__).parent / "fedapp"
    shutil.copytree(src, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("superlink", "node0", "node1")}
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--serverappio-api-address", f"127.0.0.1:{serverappio}",
             "--fleet-api-address", f"127.0.0.1:{fleet}", "--control-api-address", f"127.0.0.1:{control}"],
            env=env, cwd=tmp_path, stdout=logs["superlink"], stderr=subprocess.STDOUT, start_new_session=True))
        for i, port in enumerate((node0, node1)):
            procs.append(subprocess.Popen(
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{fleet}",
                 "--clientappio-api-address", f"127.0.0.1:{port}", "--node-config", f"partition-id={i} num-partitions=2"],
                env=env, cwd=tmp_path, stdout=logs[f"node{i}"], stderr=subprocess.STDOUT, start_new_session=True))
        left = DEADLINE_S - (time.time() - start)
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(app_dir), "lab06", "--stream",
             "--run-config", "num-server-rounds=2 num-clients=2 local-epochs=1 attack='backdoor' defence='norm_clip'"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=left)
        out = run.stdout + run.stderr
        for p in procs:
            assert p.poll() is None, f"a Flower process died early; see {tmp_path}"
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the deployment-engine run did not finish within {DEADLINE_S} s: {e}")
    finally:
        _stop(procs)
        for f in logs.values():
            f.close()
    assert run.returncode == 0, out[-3000:]
    assert "labkit-fedapp round 2: main accuracy" in out, out[-3000:]
    assert "labkit-fedapp done" in out, out[-3000:]
    assert all(p.poll() is not None for p in procs)
