"""Detached model signatures (labkit.signing) and the FraudModel file type."""
import builtins
import hashlib
import json

import numpy as np
import pytest

from labkit import signing
from labkit.serving.models import CreditModel, FeatureRange, FraudModel, IntegrityError, load_model, parse_model_bytes
from labkit.signing import (SCHEMES, SignatureError, VerifyKey, generate_keys, load_signed_model, load_trust_store,
                            save_trust_store, sign_model, verify_model_bytes)

METADATA = {"training_run": "run-42", "data_manifest_sha256": "ab" * 32, "metrics": {"auc": 0.81, "accuracy": 0.9},
            "epsilon": 3.0, "features": ("amount", "hour", "merchant")}


def small_model(cls=CreditModel, seed=0):
    rng = np.random.default_rng(seed)
    names = ["amount", "hour", "merchant"]
    weights, biases = [rng.normal(size=(3, 4)), rng.normal(size=(4, 1))], [rng.normal(size=4), rng.normal(size=1)]
    return cls(names, [True, False, False], rng.normal(size=3), np.ones(3), weights, biases,
               [FeatureRange(n, 0.0, 100.0, False) for n in names])


@pytest.fixture(scope="module")
def keys():
    """One key pair per available scheme (ML-DSA key generation is the slow part: do it once)."""
    return {scheme: generate_keys(scheme) for scheme in SCHEMES}


@pytest.fixture
def signed(tmp_path, keys):
    path = tmp_path / "model.npz"
    small_model().save(path)
    sig = sign_model(path, METADATA, [private for private, _ in keys.values()])
    return path, sig, [public for _, public in keys.values()]


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(SignatureError) as err:
        fn(*args, **kwargs)
    return str(err.value)


def test_ed25519_is_always_available_and_ml_dsa_where_its_package_is():
    assert "ed25519" in SCHEMES
    assert set(signing.available_schemes()) == set(SCHEMES)
    if "ml-dsa-65" not in SCHEMES:
        message = refusal(generate_keys, "ml-dsa-65")
        assert "not available" in message and "pip install" in message


# -- FraudModel -----------------------------------------------------------------------------------

def test_fraud_model_round_trips_as_a_fraud_model(tmp_path):
    model = small_model(FraudModel)
    digest = model.save(tmp_path / "fraud.npz")
    loaded = load_model(tmp_path / "fraud.npz", sha256=digest)
    assert type(loaded) is FraudModel and loaded.classes == ("legitimate", "fraud")
    rows = np.random.default_rng(1).uniform(0, 100, (5, 3))
    np.testing.assert_allclose(loaded.predict_proba(rows), model.predict_proba(rows))
    assert json.loads(np.load(tmp_path / "fraud.npz")["__meta__"].tobytes())["type"] == "FraudModel"
    # a credit model still loads as a credit model
    small_model(CreditModel).save(tmp_path / "credit.npz")
    assert type(load_model(tmp_path / "credit.npz")) is CreditModel


def test_fraud_model_names_missing_columns_without_credit_words():
    import pandas as pd

    with pytest.raises(ValueError) as err:
        small_model(FraudModel).to_matrix(pd.DataFrame({"amount": [1.0]}))
    assert "hour" in str(err.value) and "taiwan" not in str(err.value)
    with pytest.raises(ValueError, match="taiwan_credit"):
        small_model(CreditModel).to_matrix(pd.DataFrame({"amount": [1.0]}))


# -- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_for_each_scheme(tmp_path, keys, scheme):
    path = tmp_path / "model.npz"
    small_model().save(path)
    private, public = keys[scheme]
    sig = sign_model(path, METADATA, [private])
    assert sig == tmp_path / "model.npz.sig.json"
    document = json.loads(sig.read_text())
    assert document["model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert document["signatures"][0]["key_id"] == public.key_id == hashlib.sha256(public.public_bytes).hexdigest()[:16]
    model, metadata = load_signed_model(path, [public], require=(scheme,))
    assert isinstance(model, CreditModel)
    assert metadata == json.loads(json.dumps(METADATA))  # the tuple comes back as a JSON list


def test_both_schemes_required_together(signed):
    if len(SCHEMES) < 2:
        pytest.skip("ML-DSA is not installed here")
    path, _, trusted = signed
    model, metadata = load_signed_model(path, trusted, require=("ed25519", "ml-dsa-65"))
    assert metadata["training_run"] == "run-42"


def test_public_keys_travel_as_hex_and_through_a_trust_store_file(tmp_path, signed, keys):
    path, _, trusted = signed
    again = [VerifyKey.from_hex(k.scheme, k.to_hex()) for k in trusted]
    assert again == trusted and [k.key_id for k in again] == [k.key_id for k in trusted]
    store = save_trust_store(tmp_path / "trusted.json", trusted)
    assert load_trust_store(store) == trusted
    load_signed_model(path, load_trust_store(store), require=SCHEMES)
    assert "not a hex string" in refusal(VerifyKey.from_hex, "ed25519", "zz")
    assert "32 bytes" in refusal(VerifyKey.from_hex, "ed25519", "ab" * 31)


# -- refusals -------------------------------------------------------------------------------------

def test_a_flipped_byte_in_the_model_is_refused(signed):
    path, _, trusted = signed
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    message = refusal(load_signed_model, path, trusted, require=SCHEMES)
    assert "changed after signing" in message and "not the bytes that were signed" in message


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tampered_metadata_is_refused(signed, scheme):
    path, sig, trusted = signed
    document = json.loads(sig.read_text())
    document["metadata"]["epsilon"] = 1.0  # a better privacy claim than the one approved
    sig.write_text(json.dumps(document))
    message = refusal(load_signed_model, path, trusted, require=(scheme,))
    assert "does not verify" in message and "metadata was changed" in message


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_signature_by_another_key_pair_is_refused(tmp_path, keys, scheme):
    path = tmp_path / "model.npz"
    small_model().save(path)
    impostor, impostor_public = generate_keys(scheme)
    sign_model(path, METADATA, [impostor])
    message = refusal(load_signed_model, path, [keys[scheme][1]], require=(scheme,))
    assert impostor_public.key_id in message and "untrusted key" in message


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_forged_signature_under_a_trusted_key_id_is_refused(tmp_path, keys, scheme):
    """The attacker copies the trusted key's id into the document: the id is a label, the maths decides."""
    path = tmp_path / "model.npz"
    small_model().save(path)
    impostor, _ = generate_keys(scheme)
    sig = sign_model(path, METADATA, [impostor])
    document = json.loads(sig.read_text())
    document["signatures"][0]["key_id"] = keys[scheme][1].key_id
    sig.write_text(json.dumps(document))
    assert "does not verify" in refusal(load_signed_model, path, [keys[scheme][1]], require=(scheme,))


def test_an_untrusted_key_is_refused_even_when_its_signature_is_valid(signed, keys):
    path, _, _ = signed
    _, stranger = generate_keys("ed25519")
    message = refusal(load_signed_model, path, [stranger])
    assert keys["ed25519"][1].key_id in message and "none is in the trust store" in message


def test_a_missing_signature_file_is_refused(tmp_path, keys):
    path = tmp_path / "model.npz"
    small_model().save(path)
    message = refusal(load_signed_model, path, [keys["ed25519"][1]])
    assert message.startswith("unsigned model") and "sign_model" in message


def test_a_document_without_the_required_scheme_is_refused(tmp_path, keys):
    path = tmp_path / "model.npz"
    small_model().save(path)
    sign_model(path, METADATA, [keys["ed25519"][0]])
    required = "ml-dsa-65"
    message = refusal(load_signed_model, path, [public for _, public in keys.values()], require=("ed25519", required))
    if required in SCHEMES:
        assert f"no {required} signature" in message and "sign it with a ml-dsa-65 key as well" in message
    else:
        assert "not available" in message


def test_unknown_schemes_and_malformed_documents_are_refused(signed, keys):
    path, sig, trusted = signed
    data = path.read_bytes()
    document = json.loads(sig.read_text())
    assert "Unknown signature scheme 'rsa'" in refusal(verify_model_bytes, data, document, trusted, require=("rsa",))

    def altered(**changes):
        d = json.loads(json.dumps(document))
        d.update(changes)
        return d

    cases = {
        "unknown scheme 'falcon-512'": altered(signatures=[dict(document["signatures"][0], scheme="falcon-512")]),
        "format is": altered(format="something-else"),
        "format_version 2 is not supported": altered(format_version=2),
        "model_sha256 is not 64": altered(model_sha256="beef"),
        "metadata is not a JSON object": altered(metadata=["run-42"]),
        "holds no signatures": altered(signatures=[]),
        "lacks a scheme, key_id or signature": altered(signatures=[{"scheme": "ed25519"}]),
        "is not lowercase hex": altered(signatures=[dict(document["signatures"][0], signature="xyz")]),
        "no canonical JSON form": altered(metadata={"epsilon": float("nan")}),
    }
    for expected, bad in cases.items():
        assert expected in refusal(verify_model_bytes, data, bad, trusted), expected
    assert "not a JSON object" in refusal(verify_model_bytes, data, "{}", trusted)
    sig.write_text("{not json")
    assert "not UTF-8 JSON" in refusal(load_signed_model, path, trusted)
    with pytest.raises(ValueError, match="require at least one"):
        verify_model_bytes(data, document, trusted, require=())


def test_signing_refuses_metadata_that_is_not_plain_json_and_files_that_are_not_models(tmp_path, keys):
    path = tmp_path / "model.npz"
    small_model().save(path)
    private = keys["ed25519"][0]
    with pytest.raises(ValueError, match="no NaN or infinity"):
        sign_model(path, {"epsilon": float("inf")}, [private])
    with pytest.raises(ValueError, match="string keys"):
        sign_model(path, {1: "a"}, [private])
    with pytest.raises(ValueError, match="non-empty list"):
        sign_model(path, METADATA, [])
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    with pytest.raises(IntegrityError):
        sign_model(tmp_path / "junk.npz", METADATA, [private])
    assert not (tmp_path / "junk.npz.sig.json").exists()


# -- the file is read once ------------------------------------------------------------------------

def test_a_file_swapped_after_verification_is_never_served(signed, swap_after_first_read, tmp_path):
    path, _, trusted = signed
    approved = path.read_bytes()
    evil = tmp_path / "evil.npz"
    small_model(seed=666).save(evil)
    swap_after_first_read(path, evil.read_bytes())  # every later open of the model finds the attacker's file

    model, _ = load_signed_model(path, trusted, require=SCHEMES)
    rows = np.random.default_rng(2).uniform(0, 100, (4, 3))
    np.testing.assert_allclose(model.predict_proba(rows), parse_model_bytes(approved, "x").predict_proba(rows))
    assert path.read_bytes() == evil.read_bytes()  # the swap did happen, after the one read


def test_the_bytes_parsed_are_the_bytes_verified(signed, monkeypatch):
    path, _, trusted = signed
    opened, parsed = [], []
    real_open, real_parse = builtins.open, signing.parse_model_bytes

    def counting_open(file, *args, **kwargs):
        if str(file) == str(path):
            opened.append(1)
        return real_open(file, *args, **kwargs)

    def recording_parse(data, name):
        parsed.append(hashlib.sha256(data).hexdigest())
        return real_parse(data, name)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(signing, "parse_model_bytes", recording_parse)
    load_signed_model(path, trusted)
    assert len(opened) == 1
    assert parsed == [json.loads(signing.signature_path_for(path).read_text())["model_sha256"]]
