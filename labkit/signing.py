"""Detached signatures over a model file and its metadata, checked before the API loads the model.

What is signed: one canonical byte string, a domain-separation prefix + the sha256 of the model
file's bytes + the metadata (training run, data manifest hash, metrics, epsilon ...) as compact,
sorted JSON. Detached: the signatures live in `<model>.sig.json` beside the file, so the model
format stays as it is and several approvers and schemes can sign the same bytes.

Two schemes: Ed25519 (small, fast, everywhere) and ML-DSA-65 (FIPS 204). A quantum-capable forger
breaks Ed25519 but not ML-DSA; requiring both means a forger must break both.

Trust boundary: the verifier's trust store of public keys. A valid signature proves that the holder
of a trusted key approved these bytes and this metadata, not that the model is good or the
metrics true.
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .serving.models import parse_model_bytes, read_model_bytes

FORMAT = "labkit-model-signature"
FORMAT_VERSION = 1
DOMAIN = b"labkit.signing/model-file/v1\x00"  # a signature made here can never pass for one over another protocol
MAX_DOCUMENT_BYTES = 4 << 20  # ML-DSA-65 signatures are 3,309 bytes; a document is far below this
KNOWN_SCHEMES = ("ed25519", "ml-dsa-65")
# fixed by the standards (RFC 8032, FIPS 204), so keys can be checked even where a scheme's package is missing
PUBLIC_KEY_BYTES = {"ed25519": 32, "ml-dsa-65": 1952}
SIGNATURE_BYTES = {"ed25519": 64, "ml-dsa-65": 3309}
INSTALL_HINT = {
    "ed25519": "pip install cryptography==46.0.7 (part of labkit[serving])",
    "ml-dsa-65": "pip install pqcrypto==1.0.0 (part of labkit[serving])",
}


class SignatureError(RuntimeError):
    """A model or its signature document is refused; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------
# Schemes: each is (generate, sign, verify) over raw public key bytes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Scheme:
    name: str
    provider: str             # the package that does the maths (reported by available_schemes)
    generate: Callable[[], tuple[object, bytes]]       # -> (private key object, raw public key)
    sign: Callable[[object, bytes], bytes]              # (private, message) -> signature
    verify: Callable[[bytes, bytes, bytes], bool]       # (public, signature, message) -> valid?


def _ed25519() -> _Scheme | None:
    try:
        import cryptography
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    except ImportError:
        return None

    def generate():
        key = Ed25519PrivateKey.generate()
        return key, key.public_key().public_bytes_raw()

    def verify(public: bytes, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
            return True
        except (InvalidSignature, ValueError):
            return False

    return _Scheme("ed25519", f"cryptography {cryptography.__version__}", generate,
                   lambda key, message: key.sign(message), verify)


def _mldsa65() -> _Scheme | None:
    """pyca/cryptography when its build has ML-DSA (from a later release than the 46.x that flwr
    allows), else pqcrypto. Both are plain FIPS 204 ML-DSA-65 with an empty context: raw public keys
    and signatures are interchangeable between them."""
    try:
        import cryptography
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.backends.openssl.backend import backend
        from cryptography.hazmat.primitives.asymmetric import mldsa
        if backend.mldsa_supported():
            def generate():
                key = mldsa.MLDSA65PrivateKey.generate()
                return key, key.public_key().public_bytes_raw()

            def verify(public: bytes, signature: bytes, message: bytes) -> bool:
                try:
                    mldsa.MLDSA65PublicKey.from_public_bytes(public).verify(signature, message)
                    return True
                except (InvalidSignature, ValueError):
                    return False

            return _Scheme("ml-dsa-65", f"cryptography {cryptography.__version__}", generate,
                           lambda key, message: key.sign(message), verify)
    except (ImportError, AttributeError):
        pass
    try:
        from importlib.metadata import version

        import pqcrypto
        from pqcrypto.sign import ml_dsa_65
    except ImportError:
        return None

    def generate():
        public, secret = ml_dsa_65.keygen()
        return bytes(secret), bytes(public)

    def verify(public: bytes, signature: bytes, message: bytes) -> bool:
        try:
            ml_dsa_65.verify(public, message, signature)  # returns None, raises when invalid
            return True
        except (pqcrypto.InvalidSignatureError, ValueError):
            return False

    return _Scheme("ml-dsa-65", f"pqcrypto {version('pqcrypto')}", generate,
                   lambda key, message: bytes(ml_dsa_65.sign(key, message)), verify)


_IMPLEMENTATIONS = {s.name: s for s in (_ed25519(), _mldsa65()) if s is not None}
SCHEMES: tuple[str, ...] = tuple(name for name in KNOWN_SCHEMES if name in _IMPLEMENTATIONS)


def available_schemes() -> dict[str, str]:
    """{scheme: the package providing it} for the schemes usable in this environment."""
    return {name: _IMPLEMENTATIONS[name].provider for name in SCHEMES}


def _scheme(name) -> _Scheme:
    if name in _IMPLEMENTATIONS:
        return _IMPLEMENTATIONS[name]
    if name in KNOWN_SCHEMES:
        raise SignatureError(f"The {name} scheme is not available in this environment: its package is missing. "
                             f"Install it: {INSTALL_HINT[name]}.")
    raise SignatureError(f"Unknown signature scheme {name!r}; labkit knows {', '.join(KNOWN_SCHEMES)}. "
                         "Use one of those names.")


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyKey:
    """A public key: what a trust store holds. `key_id` is the first 16 hex of sha256(public bytes)."""

    scheme: str
    public_bytes: bytes

    def __post_init__(self):
        if self.scheme not in KNOWN_SCHEMES:
            _scheme(self.scheme)  # raises: unknown scheme
        size = PUBLIC_KEY_BYTES[self.scheme]
        if not isinstance(self.public_bytes, bytes):
            raise TypeError(f"public_bytes must be bytes, not {type(self.public_bytes).__name__}; "
                            "use VerifyKey.from_hex(scheme, text) for a key written as hex.")
        if len(self.public_bytes) != size:
            raise SignatureError(f"A {self.scheme} public key is {size} bytes, not {len(self.public_bytes)}; copy the "
                                 "whole key from the trust store.")

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.public_bytes).hexdigest()[:16]

    def to_hex(self) -> str:
        return self.public_bytes.hex()

    @classmethod
    def from_hex(cls, scheme: str, text: str) -> "VerifyKey":
        try:
            raw = bytes.fromhex(text.strip())
        except (ValueError, AttributeError):
            raise SignatureError(f"The {scheme} public key is not a hex string; paste it as public.to_hex() wrote it."
                                 ) from None
        return cls(scheme, raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        impl = _scheme(self.scheme)  # raises when the scheme's package is missing
        return len(signature) == SIGNATURE_BYTES[self.scheme] and impl.verify(self.public_bytes, signature, message)

    def __repr__(self) -> str:
        return f"VerifyKey({self.scheme!r}, key_id={self.key_id!r})"


@dataclass(frozen=True)
class SigningKey:
    """A private key and its public half. Never written anywhere by this module."""

    scheme: str
    public: VerifyKey
    _private: object = field(repr=False, compare=False)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return _scheme(self.scheme).sign(self._private, message)


def generate_keys(scheme: str) -> tuple[SigningKey, VerifyKey]:
    """A fresh (private, public) key pair for `scheme` (one of SCHEMES)."""
    private, public_raw = _scheme(scheme).generate()
    public = VerifyKey(scheme, public_raw)
    return SigningKey(scheme, public, private), public


def save_trust_store(path, keys: Iterable[VerifyKey]) -> Path:
    """Write public keys as JSON ({scheme, key_id, public_hex} per key) for load_trust_store."""
    path = Path(path)
    entries = [{"scheme": k.scheme, "key_id": k.key_id, "public_hex": k.to_hex()} for k in keys]
    path.write_text(json.dumps({"trusted_keys": entries}, indent=1) + "\n")
    return path


def load_trust_store(path) -> list[VerifyKey]:
    """The public keys of a file written by save_trust_store; a key whose id does not match is refused."""
    try:
        entries = json.loads(Path(path).read_text())["trusted_keys"]
        keys = [(VerifyKey.from_hex(e["scheme"], e["public_hex"]), e.get("key_id")) for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SignatureError(f"The trust store {path} is unreadable ({type(err).__name__}: {err}); write it again "
                             "with save_trust_store.") from None
    for key, key_id in keys:
        if key_id is not None and key_id != key.key_id:
            raise SignatureError(f"The trust store {path} lists key_id {key_id} beside a key whose id is {key.key_id}: "
                                 "the entry was edited by hand. Write it again with save_trust_store.")
    return [key for key, _ in keys]


# ---------------------------------------------------------------------------------------------
# The signed message and the document
# ---------------------------------------------------------------------------------------------

def canonical_json(metadata: dict) -> bytes:
    """Sorted keys, no spaces, UTF-8, no NaN or infinity: one byte string per metadata value."""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _normalised(metadata) -> dict:
    """The metadata as the document will hold it after a JSON round trip (tuples become lists), so
    signer and verifier canonicalise the same value."""
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise ValueError("metadata must be a dict with string keys (training run, data manifest hash, metrics ...).")
    try:
        return json.loads(canonical_json(metadata))
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be plain JSON (str, numbers, bools, None, lists, dicts; no NaN or infinity: "
                         f"write those as strings or None): {err}") from None


def signed_message(model_sha256: str, metadata: dict) -> bytes:
    """The bytes every signature covers: DOMAIN + sha256 of the model bytes + canonical metadata."""
    return DOMAIN + bytes.fromhex(model_sha256) + canonical_json(metadata)


def signature_path_for(model_path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".sig.json")


def sign_model(model_path, metadata: dict, signing_keys: list[SigningKey]) -> Path:
    """Sign the model file (read once) and `metadata` with every key; write `<model_path>.sig.json`
    and return its path. The file must load as a labkit model: only what can be served is signed."""
    model_path = Path(model_path)
    keys = list(signing_keys)
    if not keys or not all(isinstance(k, SigningKey) for k in keys):
        raise ValueError("signing_keys must be a non-empty list of SigningKey (from generate_keys(scheme)).")
    if len({k.key_id for k in keys}) != len(keys):
        raise ValueError("signing_keys holds the same key twice; pass each key once.")
    metadata = _normalised(metadata)
    data = read_model_bytes(model_path)
    parse_model_bytes(data, model_path.name)  # IntegrityError for a damaged or foreign file
    digest = hashlib.sha256(data).hexdigest()
    message = signed_message(digest, metadata)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_file": model_path.name,  # for people; the sha256 is what binds the file
        "model_sha256": digest,
        "metadata": metadata,
        "signatures": [{"scheme": k.scheme, "key_id": k.key_id, "signature": k.sign(message).hex()} for k in keys],
    }
    out = signature_path_for(model_path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)  # a reader never sees half a document
    return out


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


def _malformed(problem: str) -> SignatureError:
    return SignatureError(f"Malformed signature document: {problem}. Refuse to serve the model; sign it again with "
                          "labkit.signing.sign_model.")


def _check_document(document) -> list[dict]:
    if not isinstance(document, dict):
        raise _malformed(f"it is a {type(document).__name__}, not a JSON object")
    if document.get("format") != FORMAT:
        raise _malformed(f"format is {document.get('format')!r}, not {FORMAT!r}")
    if document.get("format_version") != FORMAT_VERSION:
        raise SignatureError(f"Signature document format_version {document.get('format_version')!r} is not supported "
                             f"(this labkit reads version {FORMAT_VERSION}); sign the model again with this labkit.")
    if not isinstance(document.get("model_sha256"), str) or not _HEX64.fullmatch(document["model_sha256"]):
        raise _malformed("model_sha256 is not 64 lowercase hex characters")
    if not isinstance(document.get("metadata"), dict):
        raise _malformed("metadata is not a JSON object")
    signatures = document.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise _malformed("it holds no signatures list")
    for i, entry in enumerate(signatures):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("scheme", "key_id",
                                                                                          "signature")):
            raise _malformed(f"signature {i} lacks a scheme, key_id or signature string")
        if entry["scheme"] not in KNOWN_SCHEMES:
            raise SignatureError(f"Signature {i} uses the unknown scheme {entry['scheme']!r} (known: "
                                 f"{', '.join(KNOWN_SCHEMES)}). Refusing the document; sign with a known scheme.")
        if not _HEX.fullmatch(entry["signature"]):
            raise _malformed(f"signature {i} is not lowercase hex")
    return signatures


def verify_model_bytes(data: bytes, document: dict, trusted: list[VerifyKey], require=("ed25519",)) -> dict:
    """The document's metadata, once these exact bytes match its sha256 and, for every scheme in
    `require`, a signature by a trusted key verifies over them and the metadata. Else SignatureError."""
    require = (require,) if isinstance(require, str) else tuple(require)
    if not require:
        raise ValueError("require names no scheme, so nothing would be checked; require at least one, "
                         "e.g. require=('ed25519',).")
    for name in require:
        _scheme(name)  # unknown or not installed: refused before anything else
    trusted = list(trusted)
    if not all(isinstance(k, VerifyKey) for k in trusted):
        raise TypeError("trusted must be a list of VerifyKey (the public keys of the people allowed to approve "
                        "models).")
    signatures = _check_document(document)

    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, document["model_sha256"]):
        raise SignatureError(f"The model bytes (sha256 {actual[:16]}...) are not the bytes that were signed "
                             f"({document['model_sha256'][:16]}...): the file was changed after signing. Refusing it; "
                             "restore the signed file or sign the new one.")
    try:
        message = signed_message(actual, document["metadata"])
    except (TypeError, ValueError):
        raise _malformed("metadata holds values with no canonical JSON form (NaN or infinity)") from None

    by_id = {(k.scheme, k.key_id): k for k in trusted}
    for name in require:
        entries = [e for e in signatures if e["scheme"] == name]
        if not entries:
            present = sorted({e["scheme"] for e in signatures})
            raise SignatureError(f"The signature document has no {name} signature (it has: {', '.join(present)}), and "
                                 f"{name} is required. Refusing the model; sign it with a {name} key as well.")
        from_trusted = [e for e in entries if (name, e["key_id"]) in by_id]
        if not from_trusted:
            ids = ", ".join(e["key_id"] for e in entries)
            raise SignatureError(f"The {name} signature(s) come from untrusted key(s) {ids}: none is in the trust "
                                 "store. Refusing the model; add the approver's public key to the trust store only "
                                 "if you trust them, or have a trusted key sign it.")
        if not any(by_id[(name, e["key_id"])].verify(bytes.fromhex(e["signature"]), message) for e in from_trusted):
            raise SignatureError(f"The {name} signature by trusted key {from_trusted[0]['key_id']} does not verify: "
                                 "the metadata was changed after signing, or the signature is damaged or forged. "
                                 "Refusing the model; restore the signed document or sign the model again.")
    return copy.deepcopy(document["metadata"])


def read_signature_document(path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise SignatureError(f"unsigned model: there is no signature document at {path}. Refuse to serve it; sign it "
                             "with labkit.signing.sign_model.") from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise _malformed(f"{path.name} is larger than {MAX_DOCUMENT_BYTES >> 20} MiB")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _malformed(f"{path.name} is not UTF-8 JSON ({type(err).__name__})") from None


def load_signed_model(model_path, trusted: list[VerifyKey], require=("ed25519",), signature_path=None):
    """(model, metadata) from a signed model file. The file is read ONCE; those bytes are verified
    against the signature document and then parsed, so a file swapped after the check is never served."""
    model, metadata, _ = load_signed_model_and_digest(model_path, trusted, require, signature_path)
    return model, metadata


def load_signed_model_and_digest(model_path, trusted: list[VerifyKey], require=("ed25519",), signature_path=None):
    """(model, metadata, sha256 of the verified bytes): see load_signed_model."""
    model_path = Path(model_path)
    data = read_model_bytes(model_path)
    document = read_signature_document(signature_path or signature_path_for(model_path))
    metadata = verify_model_bytes(data, document, trusted, require)
    return parse_model_bytes(data, model_path.name), metadata, hashlib.sha256(data).hexdigest()
