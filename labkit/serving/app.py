"""The FastAPI app (`create_app`) and a real uvicorn server on loopback (`serve`, `running`)."""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .layers import (AuditLog, Defences, KeyStore, OODDetector, QueryMonitor, RateLimiter,
                     describe_validation_error, harden, ood_features, request_models)
from .models import IntegrityError, load_model_and_digest

KEY_HEADER = "X-API-Key"

STATUS = {"missing_key": 401, "unknown_key": 403, "key_suspended": 403, "rate_limited": 429,
          "payload_too_large": 413, "invalid_json": 400, "invalid_input": 422, "out_of_distribution": 422,
          "unsupported_media_type": 415, "not_found": 404, "method_not_allowed": 405,
          "client_disconnected": 499,  # recorded only: the client left before the answer (nginx's 499)
          "internal_error": 500}


class Rejected(Exception):
    def __init__(self, kind: str, detail: str, fields: list[str] | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.fields, self.headers = kind, detail, fields or [], headers or {}


@dataclass
class ServingState:
    """Everything the running app holds; `app.state.labkit` in a created app."""

    model: object
    defences: Defences
    keys: KeyStore | None = None
    limiter: RateLimiter | None = None
    ood: OODDetector | None = None
    monitor: QueryMonitor | None = None
    audit: AuditLog | None = None
    model_sha256: str | None = None
    model_metadata: dict | None = None  # the signed metadata, when the model was loaded with trusted= keys
    single: object = None
    batch: object = None
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    outcomes: Counter = field(default_factory=Counter)
    latencies_ms: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset_clients(self) -> None:
        """Forget every client's rate-limit window and query history (and lift suspensions):
        the next requests start from a clean slate, as if they came from new clients."""
        if self.limiter is not None:
            with self.limiter._lock:
                self.limiter._log.clear()
        if self.monitor is not None:
            with self.monitor._lock:
                self.monitor.flags.clear()
                self.monitor._hist.clear()

    def stats(self) -> dict:
        with self.lock:
            lat = np.array(self.latencies_ms)
            p50, p99 = np.percentile(lat, [50, 99]) if len(lat) else (float("nan"), float("nan"))
            return {"requests": int(sum(self.outcomes.values())), "outcomes": dict(self.outcomes),
                    "server_p50_ms": float(p50), "server_p99_ms": float(p99)}


def _error(kind: str, detail: str, fields=None, headers=None, request_id: str = ""):
    body = {"error": kind, "detail": detail, "request_id": request_id}
    if fields:
        body["fields"] = fields
    return JSONResponse(body, status_code=STATUS[kind], headers=headers)


def create_app(model, defences: Defences | None = None, *, keys: KeyStore | None = None, reference=None,
               sha256: str | None = None, audit_path=None, audit_key: bytes | str | None = None, audit_anchor=None,
               seed: int | None = 0, title: str = "labkit model API", rate_limiter: RateLimiter | None = None,
               trusted: list | None = None, require=("ed25519",)):
    """A FastAPI app serving `model` (a model object, or the path of a file saved by model.save)
    behind the layers `defences` switches on.

    keys       a KeyStore (needed with defences.auth)
    reference  clean inputs (e.g. training rows or texts): calibrate OOD rejection and the probing radius
    sha256     the approved hash of the model file (needed with defences.integrity: the file is
               checked before anything in it is read, and a mismatch raises IntegrityError here)
    audit_path where the JSON-lines audit log goes (needed with defences.audit)
    audit_key  the HMAC key that signs the log's anchor (held outside the log; default: a random key,
               readable as app.state.labkit.audit.key); audit_anchor: where the anchor goes
    seed       seeds the output noise (None: fresh randomness)
    rate_limiter  a RateLimiter to use instead of the default one built from defences.rate_limit
    trusted    public keys (labkit.signing.VerifyKey) whose detached signatures the model FILE must
               carry, one per scheme in `require`: an unsigned, tampered or foreign-signed file raises
               SignatureError here, before anything in it is parsed (`app.state.labkit.model_metadata`
               holds the signed metadata)
    """
    d = defences or Defences()
    metadata = None
    if trusted is not None:
        if not isinstance(model, (str, Path)):
            raise ValueError("trusted= checks the signatures of a model FILE: pass the path of the signed model "
                             "(labkit.signing.sign_model wrote its .sig.json beside it).")
        from ..signing import load_signed_model_and_digest

        model, metadata, digest = load_signed_model_and_digest(Path(model), trusted, require)
        if d.integrity and sha256 and not hmac.compare_digest(digest, str(sha256).lower()):
            raise IntegrityError(f"the signed model's sha256 {digest[:16]}... is not the approved {str(sha256)[:16]}...")
    elif isinstance(model, (str, Path)):
        if d.integrity and not sha256:
            raise ValueError("defences.integrity is on: pass sha256= (the hash recorded when the model was approved).")
        # one read: the bytes hashed are the bytes parsed (and the digest recorded is theirs)
        model, digest = load_model_and_digest(Path(model), sha256=sha256 if d.integrity else None)
    else:
        if d.integrity:
            raise ValueError("defences.integrity checks a model FILE: pass the path of the saved model and its sha256, "
                             "e.g. create_app('model.npz', defences, sha256=model.save('model.npz')).")
        digest = None
    for need, what, hint in ((d.auth and keys is None, "auth", "keys=KeyStore() with issued keys"),
                             ((d.ood or (d.detect_probing and d.probe_radius is None)) and reference is None,
                              "ood / detect_probing", "reference= some clean inputs (training rows or texts)"),
                             (d.audit and audit_path is None, "audit", "audit_path='audit.jsonl'")):
        if need:
            raise ValueError(f"defences.{what} is on: pass {hint}.")

    state = ServingState(model=model, defences=d, keys=keys, model_sha256=digest, model_metadata=metadata,
                         rng=np.random.default_rng(seed))
    if rate_limiter is not None:
        state.limiter = rate_limiter
    elif d.rate_limit is not None:
        state.limiter = RateLimiter(d.rate_limit, d.rate_window_s)
    if d.ood:
        state.ood = OODDetector.calibrate(model, reference, d.ood_false_reject_rate, seed=seed or 0)
    if d.detect_extraction or d.detect_probing:
        radius = d.probe_radius
        if d.detect_probing and radius is None:
            radius = QueryMonitor.calibrate_radius(model, reference, seed=seed or 0)
        ref = None
        if d.detect_extraction and d.prada_test == "reference":
            if reference is None:
                raise ValueError("defences.prada_test='reference' needs reference= some clean inputs.")
            ref = QueryMonitor.reference_distances(model, reference, seed=seed or 0)
        state.monitor = QueryMonitor(extraction=d.detect_extraction, probing=d.detect_probing,
                                     test=d.prada_test if d.detect_extraction else "shapiro", reference=ref,
                                     ks_threshold=d.prada_ks_threshold, threshold=d.prada_threshold,
                                     min_queries=d.prada_min_queries, window=d.prada_window, probe_radius=radius or 0.0, probe_limit=d.probe_limit,
                                     probe_window=d.probe_window)
    if d.audit:
        state.audit = AuditLog(audit_path, key=audit_key, anchor_path=audit_anchor)
    state.single, state.batch = request_models(model, d)

    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    app.router.redirect_slashes = False  # POST /predict/ is a 404 in the documented format, not an empty 307
    app.state.labkit = state
    verbose = d.verbose_errors

    @app.get("/health")
    def health():
        return {"status": "ok", "model": type(model).__name__, "kind": model.kind, "classes": list(model.classes),
                "layers": d.layers_on()}

    def suspended(flag) -> Rejected:
        detail = "This key is suspended: its query pattern looks like model " + flag.reason + "."
        if verbose:  # the statistic and its threshold tell an attacker how far to back off
            detail = f"This key was suspended after {flag.after_queries} queries: {flag.detail}."
        return Rejected("key_suspended", detail + " Contact the API owner.")

    async def read_body(request: Request) -> bytes:
        if not d.schema:
            return await request.body()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > d.max_body_bytes:
            raise Rejected("payload_too_large", f"The body is {declared} bytes; the limit is {d.max_body_bytes}.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > d.max_body_bytes:
                raise Rejected("payload_too_large", f"The body exceeds the limit of {d.max_body_bytes} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(raw: bytes, batch: bool) -> list:
        """The model inputs carried by the body: validated (schema on) or taken as they come (off)."""
        if d.schema:
            try:
                body = (state.batch if batch else state.single).model_validate_json(raw)
            except ValidationError as err:
                kind, detail, where = describe_validation_error(err, verbose)
                raise Rejected(kind, detail, where) from None
            items = body.instances if batch else [body]
            if model.kind == "tabular":
                return [item.features.model_dump() for item in items]
            return [item.text for item in items]
        # Undefended: trust the client (what the red team exploits).
        body = json.loads(raw)
        items = body["instances"] if batch else [body]
        if model.kind == "tabular":
            return [{n: float(item["features"][n]) for n in model.feature_names} for item in items]
        return [item["text"] for item in items]

    def handle(client: str, raw: bytes, batch: bool, request_id: str, seen: dict) -> dict:
        """Parse, check and score one request (in a worker thread: CPU work never blocks the event loop)."""
        items = parse(raw, batch)
        seen["items"] = len(items)  # for the audit log, also when the request is refused below
        if state.limiter is not None and batch:  # single requests were counted before the body was read
            ok, retry = state.limiter.acquire(client, cost=len(items))
            if not ok:
                raise Rejected("rate_limited", f"This batch of {len(items)} would exceed {state.limiter.limit} queries "
                               f"per {state.limiter.window_s:g} s; retry in {retry:.0f} s or send fewer.",
                               headers={"Retry-After": str(max(1, int(np.ceil(retry))))})
        X = items if model.kind == "text" else model.to_matrix(items)
        feats = model.features(X) if state.monitor is not None else None
        if state.ood is not None:
            bad = np.flatnonzero(state.ood.is_ood(ood_features(model, X)))
            if len(bad):
                where = ", ".join(str(i) for i in bad[:10]) if batch else "the input"
                why = f" (Mahalanobis score above {state.ood.threshold:.2f})" if verbose else ""
                raise Rejected("out_of_distribution",
                               f"{where} {'are' if batch else 'is'} unlike the data this model was built for{why}; "
                               "not scored.", [f"instances.{i}" for i in bad[:10]] if batch else [])
        proba = model.predict_proba(X)
        if not np.all(np.isfinite(proba)):
            raise ValueError("the model returned non-finite probabilities")
        if state.monitor is not None:
            for f, label in zip(feats, proba.argmax(1)):
                state.monitor.observe(client, f, int(label))
            # checked here, where the answer is produced: a key suspended while this request was in
            # flight (by this batch, a concurrent request or the owner) gets no answer
            if (flag := state.monitor.flagged(client)) is not None:
                raise suspended(flag)
        out = harden(proba, model.classes, d.output, d.round_digits, d.output_noise, state.rng)
        return {"predictions": out, "request_id": request_id} if batch else {**out[0], "request_id": request_id}

    def json_body(request: Request) -> bool:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))

    async def endpoint(request: Request, batch: bool):
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        client, raw, seen = "anonymous", b"", {"items": 0}
        try:
            if d.auth:
                presented = request.headers.get(KEY_HEADER)
                if not presented:
                    raise Rejected("missing_key", f"Send your API key in the {KEY_HEADER} header.")
                client = keys.identify(presented)
                if client is None:
                    client = "unknown"
                    raise Rejected("unknown_key", "This API key is not valid.")
            elif request.client is not None:
                client = request.client.host  # the socket's peer; forwarded headers only via serve(trusted_proxy=)
            if state.monitor is not None and (flag := state.monitor.flagged(client)):
                raise suspended(flag)
            if d.schema and not json_body(request):
                # text/plain and form bodies are what a cross-site page can send without a CORS preflight
                raise Rejected("unsupported_media_type", "Send the body as JSON with Content-Type: application/json.")
            if state.limiter is not None and not batch:
                ok, retry = state.limiter.acquire(client)
                if not ok:
                    raise Rejected("rate_limited", f"More than {state.limiter.limit} queries in {state.limiter.window_s:g} s; "
                                   f"retry in {retry:.1f} s.", headers={"Retry-After": str(max(1, int(np.ceil(retry))))})
            raw = await read_body(request)
            result = await run_in_threadpool(handle, client, raw, batch, request_id, seen)
            status, outcome, response = 200, "served", JSONResponse(result)
        except Rejected as rej:
            status, outcome = STATUS[rej.kind], rej.kind
            response = _error(rej.kind, rej.detail, rej.fields, rej.headers, request_id)
        except ClientDisconnect:  # the client left mid-body: not a server error, and nobody reads an answer
            status, outcome = STATUS["client_disconnected"], "client_disconnected"
            response = _error("client_disconnected", "The client closed the connection before sending its body.",
                              request_id=request_id)
        except Exception as err:  # noqa: BLE001 - a crash must still answer in JSON and reach the audit log
            status, outcome = 500, "internal_error"
            response = _error("internal_error", f"The server failed on this input ({type(err).__name__})."
                              if verbose else "The server failed on this input.", request_id=request_id)
        elapsed = (time.perf_counter() - started) * 1000
        with state.lock:
            state.outcomes[outcome] += 1
            state.latencies_ms.append(elapsed)
        if state.audit is not None:
            await run_in_threadpool(
                state.audit.write, request_id=request_id, client=client, endpoint=request.url.path, status=status,
                outcome=outcome, items=seen["items"], body_bytes=len(raw),
                body_sha256=hashlib.sha256(raw).hexdigest() if raw else None, latency_ms=round(elapsed, 3))
        return response

    @app.post("/predict")
    async def predict(request: Request):
        return await endpoint(request, batch=False)

    @app.post("/predict/batch")
    async def predict_batch(request: Request):
        return await endpoint(request, batch=True)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """Routing errors in the documented format: 404 for unknown paths, 405 for a wrong method."""
        request_id = uuid.uuid4().hex[:16]
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return _error("method_not_allowed", f"{request.method} is not allowed on {request.url.path}"
                          f"{'; use ' + allowed if allowed else ''}.", headers=exc.headers, request_id=request_id)
        if exc.status_code == 404:
            return _error("not_found", f"No endpoint {request.url.path}; use POST /predict, POST /predict/batch or "
                          "GET /health.", request_id=request_id)
        body = {"error": "http_error", "detail": str(exc.detail), "request_id": request_id}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    return app


# ---------------------------------------------------------------------------------------------
# A real server in a background thread
# ---------------------------------------------------------------------------------------------

@dataclass
class RunningServer:
    url: str
    app: object
    server: object
    thread: threading.Thread

    @property
    def state(self) -> ServingState | None:
        return getattr(self.app.state, "labkit", None)

    def client(self, key: str | None = None, **kwargs):
        """An httpx.Client for this server, sending `key` in the X-API-Key header."""
        import httpx

        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers[KEY_HEADER] = key
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 10.0), **kwargs)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)


def _default_max_connections() -> int:
    """Open connections the server accepts: well below the process's file limit, so a flood of idle
    sockets cannot starve it of descriptors (each connection holds one)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(1000, (soft if soft != resource.RLIM_INFINITY else 4096) - 128))


def guarded_protocol(request_timeout: float, max_connections: int):
    """uvicorn's h11 protocol with the two limits it lacks: a connection must deliver its whole
    request (headers and body) within `request_timeout` seconds of opening, or of its previous
    answer; and at most `max_connections` stay open: a new one beyond it evicts the connection that
    has waited longest without a request in progress (or is itself closed when every connection is
    busy). uvicorn's own timeout_keep_alive only starts after a first answer, so a client that opens
    a socket and sends nothing (or half its headers) would otherwise hold it for ever, and a few
    hundred such sockets would leave no file descriptor for honest clients."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    finished = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)

    class GuardedH11Protocol(H11Protocol):
        _request_timer = None

        _waiting_since = float("inf")  # when this connection started waiting for a request (inf: busy)

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()
            if len(self.connections) > max_connections:
                # honest clients send their request at once; the longest-waiting idle socket goes first
                idle = min(self.connections, key=lambda c: getattr(c, "_waiting_since", float("inf")))
                victim = idle if idle._waiting_since < float("inf") and idle is not self else self
                victim._disarm()
                victim.transport.close()

        def _arm(self):
            self._disarm()
            self._waiting_since = self.loop.time()
            self._request_timer = self.loop.call_later(request_timeout, self._timed_out)

        def _disarm(self):
            self._waiting_since = float("inf")
            if self._request_timer is not None:
                self._request_timer.cancel()
                self._request_timer = None

        def _timed_out(self):
            self._request_timer = None
            if self.conn.their_state not in finished and not self.transport.is_closing():
                self.transport.close()  # the app, if it was reading the body, sees a disconnect

        def handle_events(self):
            super().handle_events()
            if self.conn.their_state in finished:
                self._disarm()
            elif self.cycle is not None and not self.cycle.response_complete:
                self._waiting_since = float("inf")  # a request is in progress: not idle (its deadline still runs)

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state not in finished:
                self._arm()  # the next request on this keep-alive connection gets the same deadline

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


@contextlib.contextmanager
def serve(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", start_timeout: float = 20.0, *,
          trusted_proxy: str | None = None, request_timeout: float = 10.0, keep_alive_s: int = 5,
          max_connections: int | None = None, max_header_bytes: int = 16 * 1024):
    """Run `app` under uvicorn on host:port (port 0: a free one) in a background thread.

    trusted_proxy    the address of a reverse proxy in front of the API; only then are its
                     X-Forwarded-For / X-Forwarded-Proto headers believed, and only from it. Without
                     one, a client is its socket address (uvicorn would otherwise trust those headers
                     from any loopback client, so anyone could pick their own identity).
    request_timeout  seconds a connection has to deliver a whole request (headers and body)
    keep_alive_s     seconds an idle keep-alive connection stays open after an answer
    max_connections  open connections kept (default: well below the file-descriptor limit); a new
                     one beyond it evicts the socket that has waited longest without a request
    max_header_bytes the largest request head h11 buffers (431/400 beyond it)

    Yields a RunningServer (`.url`, `.client(key)`, `.state`); on leaving the block (also when it
    raises) the server shuts down and its thread is joined, so nothing keeps running."""
    import uvicorn

    limit = max_connections or _default_max_connections()
    # uvicorn binds the socket itself (port 0: the system picks a free one); a socket bound here and
    # handed over costs about 40 ms per request on Linux (delayed ACKs), so that route is avoided.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=3, http=guarded_protocol(request_timeout, limit),
                            proxy_headers=trusted_proxy is not None, forwarded_allow_ips=trusted_proxy or "",
                            timeout_keep_alive=keep_alive_s, h11_max_incomplete_event_size=max_header_bytes)
    # no uvicorn limit_concurrency: it counts idle connections too, so at the cap it would answer an
    # honest request 503 instead of letting it evict an idle socket (guarded_protocol does the capping)
    server = uvicorn.Server(config)
    errors = []

    def run():
        try:
            server.run()
        except BaseException as err:  # noqa: BLE001 - reported to the caller below
            errors.append(err)

    thread = threading.Thread(target=run, name="labkit-uvicorn", daemon=True)
    threads_before = set(threading.enumerate())
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise RuntimeError(f"The API server did not start on {host}:{port}" +
                               (f": {errors[0]!r}" if errors else " in time."))
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    running_server = RunningServer(url=f"http://{host}:{port}", app=app, server=server, thread=thread)
    try:
        yield running_server
    finally:
        running_server.stop()
        # the worker threads that scored requests (run_in_threadpool) are told to stop when the server's
        # loop ends; wait for them too, so nothing this server started outlives the block
        for worker in set(threading.enumerate()) - threads_before:
            loop = getattr(worker, "loop", None)  # only this server's: its loop is closed now, others' are not
            if worker.name == "AnyIO worker thread" and loop is not None and loop.is_closed():
                worker.join(5)


@contextlib.contextmanager
def running(model, defences: Defences | None = None, *, serve_options: dict | None = None, **kwargs):
    """create_app(model, defences, **kwargs) served on a free loopback port: `with running(...) as api:`
    (serve_options: keyword arguments for serve, e.g. {"trusted_proxy": "10.0.0.2"})."""
    with serve(create_app(model, defences, **kwargs), **(serve_options or {})) as server:
        yield server
