"""Regression tests for the defects an outside red team found in labkit.serving (one test or more per
finding; each failed before its fix). The datasets findings are in test_datasets.py."""
import io
import json
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile

import httpx
import numpy as np
import pytest

from labkit import datasets
from labkit.serving import (AuditLog, Defences, Flag, IntegrityError, KeyStore, create_app, load_model,
                            make_credit_triggers, running, serve, train_credit_model)


@pytest.fixture(scope="module")
def credit():
    X, y = datasets.load("taiwan_credit", split="train")
    Xt, _ = datasets.load("taiwan_credit", split="test")
    return train_credit_model(X.iloc[:6000], y[:6000], seed=0, epochs=8), X, Xt


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _model_arrays(path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ---- 1. hash and parse the same bytes -----------------------------------------------------------

def test_a_model_file_swapped_after_the_hash_check_is_never_served(credit, tmp_path, swap_after_first_read):
    model, _, Xt = credit
    path = tmp_path / "approved.npz"
    sha = model.save(path)
    arrays = _model_arrays(path)
    arrays["b2"] = arrays["b2"] + 50.0  # the swapped-in model says "default" to everyone
    swapped = _npz_bytes(arrays)
    swap_after_first_read(path, swapped)
    try:
        loaded = load_model(path, sha256=sha)
    except IntegrityError:
        return  # refusing is fine too; serving the swapped model is not
    np.testing.assert_allclose(loaded.predict_proba(Xt[:50]), model.predict_proba(Xt[:50]))


# ---- 2. only the expected arrays, sizes checked before reading ---------------------------------

def _lying_npy(shape, dtype="<f8") -> bytes:
    """A .npy member whose header declares `shape` but that holds only 16 bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


def _with_member(src, dst, name, blob, replace=False):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if not (replace and item.filename == name):
                zout.writestr(item, zin.read(item))
        zout.writestr(name, blob)


def test_an_extra_array_in_a_model_file_is_never_read(credit, tmp_path):
    model, _, Xt = credit
    model.save(tmp_path / "m.npz")
    crafted = tmp_path / "crafted.npz"
    _with_member(tmp_path / "m.npz", crafted, "junk.npy", _lying_npy((1 << 27,)))  # declares 1 GiB
    tracemalloc.start()
    try:
        loaded = load_model(crafted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(loaded.predict_proba(Xt[:20]), model.predict_proba(Xt[:20]))
    assert peak < 64 << 20, f"loading allocated {peak / 2**20:.0f} MiB"


def test_an_expected_array_with_a_lying_header_is_refused_before_allocation(credit, tmp_path):
    model, _, _ = credit
    model.save(tmp_path / "m.npz")
    crafted = tmp_path / "crafted.npz"
    _with_member(tmp_path / "m.npz", crafted, "w0.npy", _lying_npy((1 << 15, 1 << 12)), replace=True)
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="w0"):
            load_model(crafted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


# ---- 3. malformed metadata: IntegrityError with a sentence -------------------------------------

def _meta(obj) -> np.ndarray:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return np.frombuffer(raw, dtype=np.uint8)


@pytest.mark.parametrize("case", ["not utf-8", "not json", "a list", "no layers", "bad ranges", "wrong shapes",
                                  "missing array", "not a zip"])
def test_malformed_model_files_are_integrity_errors_with_a_sentence(credit, tmp_path, case):
    model, _, _ = credit
    model.save(tmp_path / "m.npz")
    arrays = _model_arrays(tmp_path / "m.npz")
    meta = json.loads(arrays["__meta__"].tobytes())
    if case == "not utf-8":
        arrays["__meta__"] = _meta(b"\xff\xfe\xfd")
    elif case == "not json":
        arrays["__meta__"] = _meta(b"{")
    elif case == "a list":
        arrays["__meta__"] = _meta([1, 2])
    elif case == "no layers":
        arrays["__meta__"] = _meta({k: v for k, v in meta.items() if k != "layers"})
    elif case == "bad ranges":
        arrays["__meta__"] = _meta({**meta, "ranges": [{"nom": 1}]})
    elif case == "wrong shapes":
        arrays["w1"] = arrays["w1"][:3]
    elif case == "missing array":
        del arrays["std"]
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 not really" if case == "not a zip" else _npz_bytes(arrays))
    with pytest.raises(IntegrityError) as err:
        load_model(path)
    assert "bad.npz" in str(err.value) and len(str(err.value)) > 40


# ---- 5. forwarded headers -----------------------------------------------------------------------

def test_forwarded_headers_do_not_choose_the_client_without_a_trusted_proxy(credit):
    model, _, Xt = credit
    rows = [model.row(Xt, i) for i in range(10)]
    with running(model, Defences(rate_limit=5)) as api, api.client() as http:
        codes = [http.post("/predict", json={"features": row}, headers={"X-Forwarded-For": f"203.0.113.{i}"})
                 .status_code for i, row in enumerate(rows)]
    assert codes.count(200) == 5 and codes.count(429) == 5, codes
    # behind a declared proxy, its X-Forwarded-For names the client
    with running(model, Defences(rate_limit=5), serve_options={"trusted_proxy": "127.0.0.1"}) as api, \
            api.client() as http:
        codes = [http.post("/predict", json={"features": row}, headers={"X-Forwarded-For": f"203.0.113.{i}"})
                 .status_code for i, row in enumerate(rows)]
    assert codes.count(200) == 10, codes


# ---- 6. suspension checked where the answer is produced ----------------------------------------

class Gated:
    """A model whose predict_proba waits for a gate: holds a request in flight as long as a test needs."""

    def __init__(self, model):
        self._model, self.entered, self.gate = model, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict_proba(self, X):
        if len(X) > 1 or not self.gate.is_set():
            self.entered.set()
            self.gate.wait(10)
        return self._model.predict_proba(X)


def test_a_request_in_flight_when_its_key_is_suspended_gets_no_answer(credit):
    model, _, Xt = credit
    gated = Gated(model)
    keys = KeyStore()
    mallory = keys.issue("mallory")
    defences = Defences(auth=True, detect_probing=True, probe_radius=1e-9, probe_limit=10**6)
    batch = {"instances": [{"features": model.row(Xt, i)} for i in range(64)]}
    answers = []
    with running(gated, defences, keys=keys) as api:
        def send():
            with api.client(mallory) as http:
                answers.append(http.post("/predict/batch", json=batch))

        sender = threading.Thread(target=send)
        sender.start()
        assert gated.entered.wait(10)
        api.state.monitor.flags["mallory"] = Flag("mallory", "extraction", 0, "flagged by another request")
        gated.gate.set()
        sender.join(10)
    [r] = answers
    assert r.status_code == 403 and r.json()["error"] == "key_suspended" and "predictions" not in r.json()


# ---- 8. the audit log's anchor and concurrent writers --------------------------------------------

@pytest.mark.parametrize("attack", ["truncate the end", "empty it", "rewrite the whole chain", "delete the anchor",
                                    "forge the anchor"])
def test_audit_log_anchor_detects_what_the_chain_alone_misses(tmp_path, attack):
    import hashlib

    key = b"held-outside-the-log" * 2
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=key)
    for i in range(6):
        log.write(client="alice", status=200, n=i)
    assert AuditLog.verify(path, key=key)[0]
    lines = path.read_bytes().splitlines()
    anchor = AuditLog.default_anchor(path)
    if attack == "truncate the end":
        path.write_bytes(b"\n".join(lines[:4]) + b"\n")
    elif attack == "empty it":
        path.write_bytes(b"")
    elif attack == "rewrite the whole chain":
        prev, out = AuditLog.GENESIS, []
        for raw in lines:
            rec = {**json.loads(raw), "client": "mallory", "prev": prev}
            line = json.dumps(rec, sort_keys=True).encode()
            out.append(line)
            prev = hashlib.sha256(line).hexdigest()
        path.write_bytes(b"\n".join(out) + b"\n")
        anchor.write_text(json.dumps({"count": len(out), "head": prev, "hmac": "0" * 64}))
    elif attack == "delete the anchor":
        anchor.unlink()
    elif attack == "forge the anchor":
        path.write_bytes(b"\n".join(lines[:4]) + b"\n")
        head = hashlib.sha256(lines[3]).hexdigest()
        import hmac as hmac_

        forged = hmac_.new(b"a guessed key", f"labkit-audit:4:{head}".encode(), hashlib.sha256).hexdigest()
        anchor.write_text(json.dumps({"count": 4, "head": head, "hmac": forged}))
    ok, _, sentence = AuditLog.verify(path, key=key)
    assert not ok, sentence


WRITER = """
import sys
from labkit.serving import AuditLog
log = AuditLog(sys.argv[1], key=bytes.fromhex(sys.argv[2]))
for i in range(60):
    log.write(client=sys.argv[3], status=200, n=i)
"""


def test_two_processes_writing_one_audit_log_keep_an_honest_chain(tmp_path):
    key = bytes(range(32))
    path = tmp_path / "audit.jsonl"
    AuditLog(path, key=key)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), key.hex(), name]) for name in ("a", "b")]
    assert [p.wait(60) for p in procs] == [0, 0]
    ok, n, sentence = AuditLog.verify(path, key=key)
    assert ok and n == 120, sentence


# ---- 9. a client leaving mid-body is not a server error ------------------------------------------

def _half_request(url, path="/predict", declared=1000, sent=b'{"features": {', extra=b""):
    host, port = url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {declared}\r\n".encode() + extra + b"\r\n" + sent)
    return sock


@pytest.mark.parametrize("schema", [False, True])
def test_a_client_that_disconnects_mid_body_is_recorded_as_a_disconnect(credit, tmp_path, schema):
    model, X, _ = credit
    with running(model, Defences(schema=schema, audit=True), audit_path=tmp_path / "a.jsonl") as api:
        _half_request(api.url).close()
        deadline = time.monotonic() + 5
        while api.state.stats()["requests"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        outcomes = api.state.stats()["outcomes"]
    assert outcomes == {"client_disconnected": 1}, outcomes
    assert [r["outcome"] for r in AuditLog.read(tmp_path / "a.jsonl")] == ["client_disconnected"]


# ---- 10. slow and idle clients; CPU work off the event loop --------------------------------------

def _closed_by_server(sock, wait):
    sock.settimeout(wait)
    try:
        return sock.recv(1024) == b""
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def test_idle_and_half_sent_connections_are_closed_and_capped(credit):
    model, _, Xt = credit
    app = create_app(model, Defences(schema=True))
    with serve(app, request_timeout=0.5, max_connections=20) as api:
        host, port = api.url.split("//")[1].split(":")
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(30)]
        half = [_half_request(api.url, sent=b"") for _ in range(3)]  # headers done, body never comes
        slow_head = socket.create_connection((host, int(port)), timeout=5)
        slow_head.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        closed_at_once = sum(_closed_by_server(s, 0.2) for s in idle)
        assert closed_at_once >= 10  # over the connection limit: the longest-idle sockets are closed, descriptors freed
        time.sleep(0.8)
        assert all(_closed_by_server(s, 0.5) for s in idle + half + [slow_head])  # past the request deadline
        with api.client() as http:
            assert http.post("/predict", json={"features": model.row(Xt, 0)}).status_code == 200
        [s.close() for s in idle + half + [slow_head]]


def test_a_slow_request_does_not_stall_the_others(credit):
    model, _, Xt = credit
    gated = Gated(model)
    with running(gated, Defences(schema=True)) as api:
        batch = {"instances": [{"features": model.row(Xt, i)} for i in range(2)]}
        sender = threading.Thread(target=lambda: httpx.post(api.url + "/predict/batch", json=batch, timeout=20))
        sender.start()
        assert gated.entered.wait(10)
        try:
            started = time.perf_counter()
            r = httpx.get(api.url + "/health", timeout=3)
            assert r.status_code == 200 and time.perf_counter() - started < 1.0
        finally:
            gated.gate.set()
            sender.join(20)


# ---- 11. every error in the documented format ---------------------------------------------------

def test_every_error_the_app_returns_is_in_the_documented_format(credit):
    model, _, Xt = credit
    row = model.row(Xt, 0)
    with running(model, Defences(schema=True)) as api, api.client(follow_redirects=False) as http:
        answers = {
            "wrong method": (http.get("/predict"), 405, "method_not_allowed"),
            "unknown path": (http.get("/admin"), 404, "not_found"),
            "trailing slash": (http.post("/predict/", json={"features": row}), 404, "not_found"),
            "huge integer": (http.post("/predict", content=b'{"features": {"AGE": ' + b"9" * 5000 + b"}}",
                                       headers={"Content-Type": "application/json"}), 422, "invalid_input"),
        }
    for name, (r, status, kind) in answers.items():
        body = r.json()
        assert r.status_code == status and body["error"] == kind, (name, r.status_code, body)
        assert body["detail"] and len(body["request_id"]) == 16, (name, body)
    assert "POST" in answers["wrong method"][0].headers["Allow"]


# ---- 12. only JSON bodies -------------------------------------------------------------------------

def test_only_json_bodies_are_scored(credit):
    model, _, Xt = credit
    raw = json.dumps({"features": model.row(Xt, 0)}).encode()
    with running(model, Defences(schema=True)) as api, api.client() as http:
        codes = {ct: http.post("/predict", content=raw, headers={"Content-Type": ct} if ct else {}).status_code
                 for ct in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                            "", "application/json; charset=utf-8")}
        kind = http.post("/predict", content=raw, headers={"Content-Type": "text/plain"}).json()["error"]
    assert codes == {"text/plain": 415, "application/x-www-form-urlencoded": 415,
                     "multipart/form-data; boundary=x": 415, "": 415, "application/json; charset=utf-8": 200}, codes
    assert kind == "unsupported_media_type"


# ---- 13. what error details reveal ---------------------------------------------------------------

def test_errors_do_not_reveal_the_decision_boundary_unless_verbose(credit):
    model, X, Xt = credit
    keys = KeyStore()
    key = keys.issue("mallory")
    age = next(r for r in model.ranges if r.name == "AGE")
    strange = model.row(make_credit_triggers(X.iloc[:6000], 5, seed=1).inputs, 0)  # in range, unlike any client
    details = {}
    for verbose in (False, True):
        d = Defences(schema=True, auth=True, ood=True, detect_probing=True, probe_radius=0.5, probe_limit=3,
                     probe_window=10, verbose_errors=verbose)
        with running(model, d, keys=keys, reference=X) as api, api.client(key) as http:
            out_of_range = http.post("/predict", json={"features": {**model.row(Xt, 0), "AGE": 999}}).json()
            ood = http.post("/predict", json={"features": strange}).json()
            for _ in range(6):
                http.post("/predict", json={"features": model.row(Xt, 1)})
            suspended = http.post("/predict", json={"features": model.row(Xt, 1)}).json()
        details[verbose] = out_of_range, ood, suspended
        assert out_of_range["fields"] == ["features.AGE"] and ood["error"] == "out_of_distribution"
        assert suspended["error"] == "key_suspended"
    quiet, loud = details[False], details[True]
    assert f"{age.high:g}" not in quiet[0]["detail"] and f"{age.high:g}" in loud[0]["detail"]
    assert "Mahalanobis" not in quiet[1]["detail"] and "Mahalanobis" in loud[1]["detail"]
    assert "within" not in quiet[2]["detail"] and "within" in loud[2]["detail"]
