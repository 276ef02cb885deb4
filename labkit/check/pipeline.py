"""Checks for the capstone (10): the release gate in front of the model API, and feature squeezing's score.

`release_gate(model_path, trusted) -> model` must serve a model file only when both detached
signatures (Ed25519 and ML-DSA-65) from trusted keys verify over the very bytes it parses. The
bench writes five files: properly signed, one byte flipped after signing, unsigned, signed with
Ed25519 alone, and signed by keys the gate does not trust (their public keys written into the
signature document, as a forger would). Each typical mistake lets a different one through.

`squeezing_score(predict_proba, x, squeeze) -> scores` is Xu et al.'s detector statistic: the L1
distance between the predicted probabilities on x and on squeeze(x), one score per input.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .common import TODO_MESSAGE, Feedback, call, check_signature, fail, require_callable

GATE = "release_gate"
GATE_EXPECTED = "release_gate(model_path, trusted)"
SCORE = "squeezing_score"
SCORE_EXPECTED = "squeezing_score(predict_proba, x, squeeze)"


def _required_schemes() -> tuple:
    from .. import signing

    return tuple(s for s in ("ed25519", "ml-dsa-65") if s in signing.available_schemes())


def _tiny_model():
    from ..serving.models import FeatureRange, FraudModel

    rng = np.random.default_rng(10)
    names = ["amount", "hour", "new_device"]
    return FraudModel(names, np.array([True, False, False]), np.zeros(3), np.ones(3),
                      [rng.normal(size=(3, 4)), rng.normal(size=(4, 1))], [np.zeros(4), np.zeros(1)],
                      [FeatureRange(n, 0.0, 100.0, n != "amount") for n in names])


def _gate_bench(folder: Path):
    """(trusted public keys, {case: (path, about)}, the model) written under `folder`."""
    from .. import signing

    schemes = _required_schemes()
    keys = {s: signing.generate_keys(s) for s in schemes}
    foreign = {s: signing.generate_keys(s) for s in schemes}
    model = _tiny_model()
    meta = {"run": "check bench", "pr_auc": 0.75}
    cases = {}

    def save(name, signers):
        path = folder / f"{name}.npz"
        model.save(path)
        if signers:
            signing.sign_model(path, meta, signers)
        return path

    cases["good"] = save("good", [k[0] for k in keys.values()])
    tampered = save("tampered", [k[0] for k in keys.values()])
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    cases["tampered"] = tampered
    cases["unsigned"] = save("unsigned", [])
    if len(schemes) > 1:
        cases["ed25519_only"] = save("ed25519_only", [keys["ed25519"][0]])
    cases["foreign"] = save("foreign", [k[0] for k in foreign.values()])
    return [k[1] for k in keys.values()], cases, model


_REFUSE = {
    "tampered": "a file changed by one byte after it was signed was served: verify the signatures over the bytes "
                "you parse (labkit.signing.load_signed_model reads the file once and checks its sha256), and let "
                "the SignatureError propagate.",
    "unsigned": "a file without any signature document was served: a missing .sig.json must be a refusal, not a "
                "warning; do not catch SignatureError and fall back to loading the file.",
    "ed25519_only": "a file signed with Ed25519 alone was served: require both schemes, "
                    "require=(\"ed25519\", \"ml-dsa-65\"); with Ed25519 alone a quantum-capable forger needs to break "
                    "only the classical signature.",
    "foreign": "a file signed by keys you do not trust was served: verify against your own trust store (the "
               "`trusted` keys), never against public keys that arrive with the signature document.",
}


def release_gate(fn: Callable) -> Feedback:
    """Check `fn(model_path, trusted) -> model`: serves the signed file, refuses the four others."""
    schemes = _required_schemes()
    with tempfile.TemporaryDirectory(prefix="labkit-gate-") as tmp:
        trusted, cases, model = _gate_bench(Path(tmp))
        require_callable(GATE, fn)
        check_signature(GATE, fn, (cases["good"], list(trusted)), GATE_EXPECTED)
        try:
            served = fn(cases["good"], list(trusted))
        except NotImplementedError as err:
            fail(GATE, TODO_MESSAGE, err)
        except Exception as err:  # noqa: BLE001 - the learner's refusal of a good file
            fail(GATE, f"the properly signed file was refused ({type(err).__name__}: {err}): pass the trusted keys "
                 f"and require exactly {schemes}.")
        if served is None or not hasattr(served, "predict_proba"):
            fail(GATE, "for a properly signed file return the loaded model (the object load_signed_model gives back, "
                 f"not {type(served).__name__}), so the API can serve it.")
        rows = np.array([[10.0, 3, 0], [250.0, 23, 1]])
        if not np.allclose(served.predict_proba(rows), model.predict_proba(rows)):
            fail(GATE, "the model you return predicts differently from the signed file: return the model parsed from "
                 "the verified bytes.")
        for case, path in cases.items():
            if case == "good":
                continue
            try:
                out = fn(path, list(trusted))
            except Exception:
                continue  # refused, as it should be
            fail(GATE, _REFUSE[case] if out is not None else
                 f"({case}) you returned None instead of refusing: raise (let labkit.signing.SignatureError "
                 "propagate), so the API never starts with no model or a bad one.")
    return Feedback(GATE, True, f"serves the file signed with {' + '.join(schemes)} by trusted keys and refuses the "
                    "tampered, unsigned, " + ("Ed25519-only " if len(schemes) > 1 else "") +
                    "and foreign-signed ones.").show()


def _score_bench():
    w = np.array([2.0, -1.5, 0.7])

    def proba(x):
        p = 1 / (1 + np.exp(-(np.asarray(x, float) @ w - 0.2)))
        return np.stack([1 - p, p], axis=1)

    def squeeze(x):
        return np.round(np.asarray(x, float), 1)

    rng = np.random.default_rng(11)
    x = rng.normal(0, 1, (12, 3))
    x[:4] = np.round(x[:4], 1) + 0.049  # inputs whose squeezing moves them
    x[4] = [0.149, 0.04, 0.0]           # just across the boundary: squeezing flips the predicted label
    x[5] = [0.151, 0.0, -0.04]
    return proba, squeeze, x


def squeezing_score(fn: Callable) -> Feedback:
    """Check `fn(predict_proba, x, squeeze) -> (n,) scores` against the L1 distance of the two predictions."""
    proba, squeeze, x = _score_bench()
    x_in = x.copy()
    out = call(SCORE, fn, (proba, x_in, squeeze), SCORE_EXPECTED, [])
    if not np.array_equal(x_in, x):
        fail(SCORE, "your function changed x in place: squeeze a copy (squeeze(x) returns a new array).")
    if out is None:
        fail(SCORE, "your function returned None: return one score per input, an array of shape (n,).")
    got = np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out, dtype=float)
    want = np.abs(proba(x) - proba(squeeze(x))).sum(1)
    if got.shape != want.shape:
        if got.size == 1:
            fail(SCORE, "you returned one number for the whole batch: keep one score per input (sum over the "
                 "classes, axis=1, not over everything), since each transaction is flagged on its own.")
        fail(SCORE, f"your scores have shape {got.shape}; return one score per input, shape {want.shape}.")
    if np.allclose(got, want, atol=1e-9):
        return Feedback(SCORE, True, "the L1 distance between the predictions on the raw and the squeezed input, "
                        "one score per input.").show()
    signed = (proba(x) - proba(squeeze(x))).sum(1)
    if np.allclose(got, signed, atol=1e-9) or np.allclose(got, np.abs(signed), atol=1e-9):
        fail(SCORE, "your scores are all zero: the signed differences of two probability vectors cancel (each sums "
             "to 1), and a squeezed input squeezed again does not move; compare predict_proba(x) with "
             "predict_proba(squeeze(x)) and take the absolute value per class before summing, "
             "np.abs(p - q).sum(axis=1).")
    labels = (proba(x).argmax(1) != proba(squeeze(x)).argmax(1)).astype(float)
    if np.allclose(got, labels) or np.allclose(got, 2 * labels):
        fail(SCORE, "you compared predicted labels, so every score is 0 or 1 and the threshold cannot be tuned: "
             "compare the probability vectors, np.abs(p - q).sum(axis=1).")
    if np.allclose(got, np.sqrt(((proba(x) - proba(squeeze(x))) ** 2).sum(1))) or np.allclose(got, want / 2):
        fail(SCORE, "you used the L2 or max distance; feature squeezing's score is the L1 distance between the two "
             "probability vectors, np.abs(p - q).sum(axis=1).")
    fail(SCORE, "your scores differ from np.abs(predict_proba(x) - predict_proba(squeeze(x))).sum(axis=1) "
         f"(first input: yours {got.ravel()[0]:.4f}, expected {want[0]:.4f}).")
