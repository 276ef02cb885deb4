"""A model API with defence layers that can be switched on one by one (FastAPI + a real uvicorn).

Models (labkit.serving.models): `train_credit_model` (Taiwan credit default, an MLP; 1 = default)
and `train_sentiment_model` (rt_polarity, TF-IDF + logistic regression; 1 = positive). Both expose
`kind`, `classes`, `predict_proba(inputs)`, `features(inputs)` (numeric vectors the detectors
measure distances in) and `save(path)` -> sha256 (one .npz file, no pickle); `load_model(path,
sha256=...)` refuses a tampered file (IntegrityError). Watermarks: `make_credit_triggers`,
`make_text_triggers`, `train_*(..., watermark=wm)`, `verify_watermark(model, wm)`.

Any object with `kind` ("tabular" needs `feature_names`, `ranges`, `to_matrix`; "text" needs
nothing more), `classes`, `predict_proba` and `features` can be served.

The HTTP API (JSON in, JSON out):

    GET  /health                 {"status": "ok", "classes": [...], "layers": [...]}   (no key needed)
    POST /predict                text: {"text": "a fine film"}
                                 tabular: {"features": {"LIMIT_BAL": 50000, "SEX": 2, ...}}
        -> {"label": "positive", "label_id": 1, "probabilities": {"negative": 0.2, "positive": 0.8},
            "request_id": "..."}                (output="label": no "probabilities")
    POST /predict/batch          {"instances": [<one /predict body>, ...]}  (a batch of n counts as n queries)
        -> {"predictions": [<one /predict answer without request_id>, ...], "request_id": "..."}
    Errors: {"error": kind, "detail": sentence, "fields": [...], "request_id": ...} with
        401 missing_key, 403 unknown_key, 403 key_suspended (flagged by the query monitor),
        429 rate_limited (Retry-After header), 413 payload_too_large, 400 invalid_json,
        415 unsupported_media_type (with schema: the body must be Content-Type application/json),
        422 invalid_input (names the field), 422 out_of_distribution, 404 not_found (also for a
        trailing slash: no redirects), 405 method_not_allowed (Allow header), 500 internal_error.
        A client that leaves mid-body is recorded as client_disconnected (499), not as an error of ours.
        Details are quiet by default: a range error names the field, not the learned bound; an OOD
        refusal and a suspension give no threshold or statistic. Defences(verbose_errors=True) shows
        them (a lab, or debugging), which hands an attacker the decision boundary.
    The key travels in the X-API-Key header. Without auth, a client is its socket address:
    X-Forwarded-For is believed only from a declared proxy (serve(app, trusted_proxy="10.0.0.2")).

Defences (a frozen dataclass; `Defences()` = undefended, `Defences.all()` = every layer,
`d.but(output="label")` = a changed copy): schema, max_body_bytes, auth, rate_limit /
rate_window_s, ood / ood_false_reject_rate, output ("probabilities", "rounded", "label"),
round_digits, output_noise, audit, integrity, verbose_errors, detect_extraction (PRADA: prada_test "shapiro" with
prada_threshold on W, or "reference" with prada_ks_threshold on a KS test against simulated clean
streams of the reference= inputs; prada_min_queries, prada_window), detect_probing (probe_radius,
probe_limit, probe_window). `Defences.all()` uses the reference test: on long streams of real clients
the published Shapiro-Wilk threshold flags honest keys. The request during which a key is flagged,
every later one, and every request still in flight when it is flagged (checked where the answer
is produced) get 403 key_suspended;
`api.state.monitor.flags` holds the Flag (client, reason, after_queries, detail) and
`api.state.monitor.statistic(client)` the latest W or KS value.

Example (what lab 05 does):

    from labkit import datasets
    from labkit.serving import Defences, KeyStore, running, train_sentiment_model

    texts, labels = datasets.load("rt_polarity", split="train")
    model = train_sentiment_model(texts, labels, seed=0)
    keys = KeyStore()
    alice = keys.issue("alice")
    defences = Defences(auth=True, output="label", detect_extraction=True, prada_threshold=0.9)
    with running(model, defences, keys=keys, reference=texts) as api:   # real uvicorn, free port
        with api.client(alice) as http:                                  # httpx.Client, key set
            r = http.post("/predict", json={"text": "a gripping, funny film"})
            print(r.status_code, r.json())
        print(api.state.stats(), api.state.monitor.flagged("alice"))
    # leaving the block stops the server and joins its thread, also when the block raised

    # or in two steps: app = create_app(model, defences, keys=keys); with serve(app) as api: ...
    # integrity: sha = model.save("m.npz"); create_app("m.npz", Defences(integrity=True), sha256=sha)
    # (the file is read once: the bytes hashed are the bytes parsed; only the model's arrays are read)

`serve()` sets the limits uvicorn does not: a connection must deliver its whole request within
`request_timeout` (10 s), open connections are capped below the file-descriptor limit
(`max_connections`: a new connection evicts the longest-idle one), headers are limited to 16 kB, and
scoring runs in a worker thread so a large request never stalls the event loop.

The audit log (`Defences(audit=True)`, `audit_path=`) chains each line to the previous one by
sha256 and signs the line count and the last hash with an HMAC key held outside the log
(`audit_key=`, default a random key in `api.state.audit.key`), in an anchor file kept apart
(`audit_anchor=`, default `<log>.anchor`): `AuditLog.verify(path, key=...)` then detects a
truncated, emptied or rewritten log. Writers hold an fcntl lock, so processes can share a log.

`api.state` (a ServingState) also has `stats()` (requests, outcomes by kind, server-side p50/p99
ms) and `reset_clients()` (forget rate-limit windows, query histories and suspensions).
`create_app(..., rate_limiter=RateLimiter(limit, window_s, decide=fn))` plugs in a custom
sliding-window decision. Red-team attacks for the credit API live in labkit.serving.redteam.

The layers themselves (KeyStore, RateLimiter, OODDetector, QueryMonitor, harden, AuditLog) are
usable without a server; see labkit.serving.layers.
"""
from .app import KEY_HEADER, RunningServer, ServingState, create_app, running, serve
from .layers import (AuditLog, Defences, Flag, KeyStore, OODDetector, QueryMonitor, RateLimiter, harden, sliding_window_allow,
                     hash_key, honest_streams, request_models)
from .models import (CreditModel, IntegrityError, SentimentModel, Watermark, WatermarkResult, load_model,
                     make_credit_triggers, make_text_triggers, sha256_file, train_credit_model,
                     train_sentiment_model, verify_watermark)

__all__ = [
    "KEY_HEADER", "RunningServer", "ServingState", "create_app", "running", "serve",
    "AuditLog", "Defences", "Flag", "KeyStore", "OODDetector", "QueryMonitor", "RateLimiter", "harden", "hash_key",
    "sliding_window_allow", "honest_streams",
    "request_models",
    "CreditModel", "IntegrityError", "SentimentModel", "Watermark", "WatermarkResult", "load_model",
    "make_credit_triggers", "make_text_triggers", "sha256_file", "train_credit_model", "train_sentiment_model",
    "verify_watermark",
]
