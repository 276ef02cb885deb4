"""The models behind the API: a credit-scoring MLP and its fraud-detection twin (tabular) and a
sentiment classifier (text).

All expose the same small interface, which is all the API and its defences rely on:

    model.kind                 "tabular" or "text"
    model.classes              label names, index = class id
    model.predict_proba(X)     (n, n_classes) float array
    model.features(X)          (n, d) float array: the numeric view the detectors measure distances in
    model.save(path)           writes ONE .npz file (numpy arrays + JSON metadata, no pickle); returns its sha256

`load_model(path, sha256=...)` reads a saved model back, never unpickling, and refuses a file
whose sha256 differs from the expected one (`IntegrityError`). The file is read once: the bytes
hashed are the bytes parsed (`read_model_bytes` and `parse_model_bytes` are those two steps, for
callers that check the bytes themselves, such as labkit.signing); only the arrays the model type
needs are read, each sized first; a malformed file of any kind is an IntegrityError with a sentence.
Tabular inputs are a pandas DataFrame, a list of {feature name: value} dicts, or a 2-D array in
`feature_names` order; text inputs are a list of strings.

A watermark is a secret trigger set with labels drawn at random (`make_credit_triggers`,
`make_text_triggers`), mixed into the training data (`train_*_model(..., watermark=wm)`);
`verify_watermark(model, wm)` tells whether a model agrees with the secret labels far more often
than chance (binomial test).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..datasets import DatasetCorrupted, npz_arrays, sha256_of

FORMAT_VERSION = 1


class IntegrityError(RuntimeError):
    """A model file does not match the sha256 it was deployed with (or is not a labkit model file)."""


sha256_file = sha256_of  # one streaming file hash for data and models


def _save_npz(path, meta: dict, arrays: dict) -> str:
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"Model files are .npz archives; name the file '{path.stem}.npz' instead of '{path.name}'.")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, format_version=FORMAT_VERSION)
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, __meta__=blob, **arrays)
    return sha256_file(path)


def _softmax2(z: np.ndarray) -> np.ndarray:
    """Binary logits (n,) -> (n, 2) probabilities, numerically stable."""
    with np.errstate(over="ignore", invalid="ignore"):
        p1 = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
    return np.stack([1 - p1, p1], axis=1)


# ---------------------------------------------------------------------------------------------
# Tabular: credit scoring
# ---------------------------------------------------------------------------------------------

@dataclass
class FeatureRange:
    name: str
    low: float
    high: float
    integer: bool


def learn_ranges(frame, margin: float = 0.1) -> list[FeatureRange]:
    """Allowed range per column from training data: integers (categories, months) keep their seen
    range; continuous columns get `margin` x (max - min) extra on each side, never below 0 when the
    training data never went below 0."""
    ranges = []
    for name in frame.columns:
        col = frame[name].to_numpy(dtype=float)
        low, high = float(col.min()), float(col.max())
        # whole numbers over a small range are codes (sex, education, months late): exact range, integers only
        integer = bool(np.all(np.equal(np.mod(col, 1), 0))) and high - low <= 100
        if not integer:
            spread = margin * (high - low)
            new_low = low - spread
            low, high = (max(new_low, 0.0) if low >= 0 else new_low), high + spread
        ranges.append(FeatureRange(name, low, high, integer))
    return ranges


class CreditModel:
    """A small MLP credit scorer (1 = default). Amount columns pass through a signed log before
    standardisation; inference is plain numpy on the exported weights."""

    kind = "tabular"
    classes = ("repaid", "default")
    model_type = "CreditModel"  # the "type" saved in the file's metadata; the loader dispatches on it
    input_hint = "the taiwan_credit features"  # what a caller missing columns should pass instead

    def __init__(self, feature_names, log_columns, mean, std, weights, biases, ranges: list[FeatureRange]):
        self.feature_names = list(feature_names)
        self.log_columns = np.asarray(log_columns, dtype=bool)
        self.mean, self.std = np.asarray(mean, float), np.asarray(std, float)
        self.weights = [np.asarray(w, float) for w in weights]
        self.biases = [np.asarray(b, float) for b in biases]
        self.ranges = list(ranges)

    # -- inputs ------------------------------------------------------------------------------
    def to_matrix(self, X) -> np.ndarray:
        """DataFrame / list of dicts / 2-D array -> float matrix in feature_names order."""
        if hasattr(X, "columns"):
            missing = [n for n in self.feature_names if n not in X.columns]
            if missing:
                raise ValueError(f"The table lacks the model's columns {missing}; pass {self.input_hint}.")
            return X[self.feature_names].to_numpy(dtype=float)
        if isinstance(X, dict):
            X = [X]
        if len(X) and isinstance(X[0], dict):
            return np.array([[float(row[n]) for n in self.feature_names] for row in X], dtype=float)
        arr = np.asarray(X, dtype=float)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.shape[1] != len(self.feature_names):
            raise ValueError(f"Expected {len(self.feature_names)} columns ({', '.join(self.feature_names[:3])}, ...), "
                             f"got {arr.shape[1]}.")
        return arr

    def features(self, X) -> np.ndarray:
        """Standardised model inputs (signed log on amount columns): the space distances are measured in."""
        m = self.to_matrix(X).copy()
        m[:, self.log_columns] = np.sign(m[:, self.log_columns]) * np.log1p(np.abs(m[:, self.log_columns]))
        return (m - self.mean) / self.std

    def logits(self, X) -> np.ndarray:
        h = self.features(X)
        with np.errstate(over="ignore", invalid="ignore"):  # absurd inputs give inf/nan, caught by the API
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                h = h @ w + b
                if i < len(self.weights) - 1:
                    h = np.maximum(h, 0)
        return h[:, 0]

    def predict_proba(self, X) -> np.ndarray:
        return _softmax2(self.logits(X))

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def row(self, X, i: int = 0) -> dict:
        """One input as the {feature: value} dict the API's request body carries."""
        m = self.to_matrix(X)[i]
        return {n: (int(v) if r.integer else float(v)) for n, v, r in zip(self.feature_names, m, self.ranges)}

    # -- persistence --------------------------------------------------------------------------
    def save(self, path) -> str:
        meta = {"type": self.model_type, "feature_names": self.feature_names,
                "ranges": [r.__dict__ for r in self.ranges], "layers": len(self.weights)}
        arrays = {"log_columns": self.log_columns, "mean": self.mean, "std": self.std}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        return _save_npz(path, meta, arrays)

    def _check(self) -> None:
        """Shapes that fit together and finite numbers (a loaded file must not be trusted on its word)."""
        d = len(self.feature_names)
        if not d or not all(isinstance(n, str) for n in self.feature_names):
            raise ValueError("feature_names must be a non-empty list of strings")
        if not (self.log_columns.shape == self.mean.shape == self.std.shape == (d,)) or len(self.ranges) != d:
            raise ValueError(f"log_columns, mean, std and ranges must each have one entry per feature ({d})")
        width = d
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise ValueError(f"layer {i}: weights {w.shape} and biases {b.shape} do not follow a width of {width}")
            width = w.shape[1]
        if width != 1:
            raise ValueError(f"the last layer has {width} outputs; a {self.model_type} has one logit")
        if not all(np.all(np.isfinite(a)) for a in [self.mean, self.std, *self.weights, *self.biases]):
            raise ValueError("the weights hold NaN or infinity")

    @classmethod
    def _from_npz(cls, meta, arrays):
        n = meta["layers"]
        return cls(meta["feature_names"], arrays["log_columns"], arrays["mean"], arrays["std"],
                   [arrays[f"w{i}"] for i in range(n)], [arrays[f"b{i}"] for i in range(n)],
                   [FeatureRange(**r) for r in meta["ranges"]])


class FraudModel(CreditModel):
    """The same numpy MLP as a fraud detector (1 = fraud). Its own type in the file, so a saved fraud
    model loads back as one and its labels never read "repaid" / "default"."""

    classes = ("legitimate", "fraud")
    model_type = "FraudModel"
    input_hint = "the transaction features the model was trained on"


def train_credit_model(X_train, y_train, seed: int = 0, hidden=(32, 16), epochs: int = 30,
                       watermark: "Watermark | None" = None, watermark_repeats: int = 20) -> CreditModel:
    """Fit the credit MLP (scikit-learn's MLPClassifier, Adam) and export its weights.

    With `watermark`, its trigger rows (labels at random) are repeated `watermark_repeats` times in
    the training set so the network memorises them."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    names = list(X_train.columns)
    raw = X_train.to_numpy(dtype=float)
    log_columns = np.array([n.startswith(("BILL_AMT", "PAY_AMT", "LIMIT_BAL")) for n in names])
    logged = raw.copy()
    logged[:, log_columns] = np.sign(logged[:, log_columns]) * np.log1p(np.abs(logged[:, log_columns]))
    mean, std = logged.mean(0), logged.std(0) + 1e-9
    model = CreditModel(names, log_columns, mean, std, [np.zeros((len(names), 1))], [np.zeros(1)], learn_ranges(X_train))
    X, y = model.features(raw), np.asarray(y_train)
    if watermark is not None:
        X = np.vstack([X] + [model.features(watermark.inputs)] * watermark_repeats)
        y = np.concatenate([y] + [watermark.labels] * watermark_repeats)
    mlp = MLPClassifier(hidden_layer_sizes=tuple(hidden), max_iter=epochs, batch_size=256, learning_rate_init=2e-3,
                        alpha=1e-4, random_state=seed, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(X, y)
    model.weights, model.biases = [w.copy() for w in mlp.coefs_], [b.copy() for b in mlp.intercepts_]
    return model


# ---------------------------------------------------------------------------------------------
# Text: sentiment
# ---------------------------------------------------------------------------------------------

TOKEN = re.compile(r"(?u)\b\w\w+\b")


class SentimentModel:
    """TF-IDF (words and bigrams) + logistic regression (1 = positive). `features` is a
    32-dimensional LSA projection of the TF-IDF vector plus the share of known words."""

    kind = "text"
    classes = ("negative", "positive")

    def __init__(self, vocabulary: dict, idf, coef, intercept: float, components, ngram_range=(1, 2)):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vocabulary = {str(k): int(v) for k, v in vocabulary.items()}
        self.idf = np.asarray(idf, float)
        self.coef = np.asarray(coef, float).reshape(-1)
        self.intercept = float(intercept)
        self.components = np.asarray(components, float)
        self.ngram_range = tuple(ngram_range)
        self.vectorizer = TfidfVectorizer(ngram_range=self.ngram_range, sublinear_tf=True, vocabulary=self.vocabulary)
        self.vectorizer.idf_ = self.idf
        self._unigrams = {w for w in self.vocabulary if " " not in w}

    @staticmethod
    def _texts(texts) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"Text inputs must be strings; got {bad[0]}. Pass a list of str.")
        return texts

    def tfidf(self, texts):
        return self.vectorizer.transform(self._texts(texts))

    def predict_proba(self, texts) -> np.ndarray:
        return _softmax2(np.asarray(self.tfidf(texts) @ self.coef).reshape(-1) + self.intercept)

    def predict(self, texts) -> np.ndarray:
        return self.predict_proba(texts).argmax(1)

    def known_share(self, texts) -> np.ndarray:
        shares = []
        for t in self._texts(texts):
            tokens = TOKEN.findall(t.lower())
            shares.append(sum(tok in self._unigrams for tok in tokens) / len(tokens) if tokens else 0.0)
        return np.array(shares)

    def features(self, texts) -> np.ndarray:
        texts = self._texts(texts)
        lsa = np.asarray(self.tfidf(texts) @ self.components.T)
        return np.hstack([lsa, self.known_share(texts)[:, None]])

    def ood_features(self, texts) -> np.ndarray:
        """A compact view for out-of-distribution scoring: the 8 leading LSA directions, the share of
        known words and the log number of words (a 1-D anomaly stands out among few dimensions)."""
        texts = self._texts(texts)
        lsa = np.asarray(self.tfidf(texts) @ self.components[:8].T)
        n_tokens = np.array([len(TOKEN.findall(t.lower())) for t in texts], dtype=float)
        return np.hstack([lsa, self.known_share(texts)[:, None], np.log1p(n_tokens)[:, None]])

    def save(self, path) -> str:
        meta = {"type": "SentimentModel", "vocabulary": self.vocabulary, "intercept": self.intercept,
                "ngram_range": list(self.ngram_range)}
        return _save_npz(path, meta, {"idf": self.idf, "coef": self.coef, "components": self.components})

    def _check(self) -> None:
        """Shapes that fit together and finite numbers (a loaded file must not be trusted on its word)."""
        n = len(self.idf)
        if self.idf.ndim != 1 or self.coef.shape != (n,) or self.components.ndim != 2 or self.components.shape[1] != n:
            raise ValueError(f"idf {self.idf.shape}, coef {self.coef.shape} and components {self.components.shape} "
                             "do not fit one vocabulary")
        if any(not 0 <= i < n for i in self.vocabulary.values()):
            raise ValueError(f"the vocabulary points outside the {n} weights")
        if len(self.ngram_range) != 2 or not all(isinstance(k, int) and 1 <= k <= 5 for k in self.ngram_range):
            raise ValueError(f"ngram_range {self.ngram_range!r} is not a pair of small integers")
        if not all(np.all(np.isfinite(a)) for a in (self.idf, self.coef, self.components)) or \
                not np.isfinite(self.intercept):
            raise ValueError("the weights hold NaN or infinity")

    @classmethod
    def _from_npz(cls, meta, arrays):
        return cls(meta["vocabulary"], arrays["idf"], arrays["coef"], meta["intercept"], arrays["components"],
                   meta["ngram_range"])


def train_sentiment_model(texts: Sequence[str], labels, seed: int = 0, C: float = 4.0, max_features: int = 10_000,
                          lsa_dims: int = 32, watermark: "Watermark | None" = None,
                          watermark_repeats: int = 3) -> SentimentModel:
    """Fit TF-IDF + logistic regression (scikit-learn) and export vocabulary, idf and weights."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, labels = list(texts), np.asarray(labels)
    if watermark is not None:
        texts = texts + list(watermark.inputs) * watermark_repeats
        labels = np.concatenate([labels] + [watermark.labels] * watermark_repeats)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=max_features)
    X = vec.fit_transform(texts)
    clf = LogisticRegression(C=C, solver="liblinear", random_state=seed).fit(X, labels)
    svd = TruncatedSVD(n_components=lsa_dims, random_state=seed).fit(X)
    vocab = {k: int(v) for k, v in vec.vocabulary_.items()}
    return SentimentModel(vocab, vec.idf_, clf.coef_[0], clf.intercept_[0], svd.components_)


# ---------------------------------------------------------------------------------------------
# Loading, integrity
# ---------------------------------------------------------------------------------------------

MODEL_TYPES = {"CreditModel": CreditModel, "FraudModel": FraudModel, "SentimentModel": SentimentModel}

MAX_MODEL_BYTES = 256 << 20   # a labkit model file is a few MB; anything far larger is refused unread
MAX_META_BYTES = 16 << 20     # the JSON metadata (a sentiment model's vocabulary is well under 1 MB)


def _expected_arrays(meta: dict) -> list[str]:
    """The arrays a model of this type is made of: only these are read from the archive."""
    if issubclass(MODEL_TYPES[meta["type"]], CreditModel):
        n = meta["layers"]
        if not isinstance(n, int) or not 1 <= n <= 16:
            raise ValueError(f"layers={n!r} is not a small positive integer")
        return ["log_columns", "mean", "std"] + [f"{p}{i}" for i in range(n) for p in ("w", "b")]
    return ["idf", "coef", "components"]


def parse_model_bytes(data: bytes, name: str):
    """A model from the bytes of a saved file (`name` is only for messages). Every defect of the file is
    an IntegrityError with a sentence. Whoever checked the bytes (a sha256, a signature) parses these
    same bytes, never the file again."""
    try:
        meta_blob = npz_arrays(data, ["__meta__"], name, MAX_META_BYTES)["__meta__"]
    except DatasetCorrupted as err:
        if "pickled" in str(err):
            raise IntegrityError(f"{name} holds pickled objects; labkit model files never do. Refusing it.") from None
        raise IntegrityError(f"{name} is not a labkit model file: {err} Save models with model.save(path).") from None
    try:
        meta = json.loads(meta_blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{name}: the metadata is not UTF-8 JSON ({type(err).__name__}); the file is damaged "
                             "or was not written by model.save().") from None
    if not isinstance(meta, dict) or meta.get("type") not in MODEL_TYPES:
        kind = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
        raise IntegrityError(f"{name}: unknown model type {kind!r}; known: {', '.join(MODEL_TYPES)}.")
    try:
        arrays = npz_arrays(data, _expected_arrays(meta), name, MAX_MODEL_BYTES)
        model = MODEL_TYPES[meta["type"]]._from_npz(meta, arrays)
        model._check()
    except DatasetCorrupted as err:
        raise IntegrityError(f"{err} It is not a complete {meta['type']} file; refusing it (save the model again "
                             "with model.save(path)).") from None
    except Exception as err:  # noqa: BLE001 - KeyError, TypeError, ValueError ... from a malformed file
        raise IntegrityError(f"{name}: the {meta['type']} in it is malformed ({type(err).__name__}: {err}). "
                             "Refusing it; save the model again with model.save(path).") from None
    return model


def load_model(path, sha256: str | None = None):
    """Load a model saved by `.save()`. The file is read ONCE; with `sha256`, those bytes are hashed
    and a mismatch raises IntegrityError before anything in them is parsed, and the same bytes are
    parsed (a file swapped on disk after the check is never served). Only the arrays the model type
    needs are read, each after its declared size is checked. Never unpickles."""
    return load_model_and_digest(path, sha256)[0]


def read_model_bytes(path) -> bytes:
    """The whole model file in one read, refused unread when larger than MAX_MODEL_BYTES."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}; save one with model.save({str(path)!r}).")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size  # asked first: read(n) would reserve n bytes up front
        data = f.read(size + 1) if size <= MAX_MODEL_BYTES else b""
    if not data and size or len(data) > MAX_MODEL_BYTES:
        raise IntegrityError(f"{path.name} is larger than {MAX_MODEL_BYTES >> 20} MiB; labkit model files are a few "
                             "MB. Refusing to read it.")
    return data


def load_model_and_digest(path, sha256: str | None = None):
    """(model, sha256 of the very bytes it was parsed from): see load_model."""
    path = Path(path)
    data = read_model_bytes(path)
    actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None:
        if not hmac.compare_digest(actual, str(sha256).lower()):
            raise IntegrityError(
                f"{path.name}: sha256 {actual[:16]}... does not match the deployed {str(sha256)[:16]}...: the file was "
                f"changed after it was approved. Refusing to serve it; restore the approved file or re-approve it.")
    return parse_model_bytes(data, path.name), actual


# ---------------------------------------------------------------------------------------------
# Watermark
# ---------------------------------------------------------------------------------------------

@dataclass
class Watermark:
    """A secret trigger set: inputs and the labels the owner chose for them at random."""

    inputs: object  # DataFrame (tabular) or list of str (text)
    labels: np.ndarray


@dataclass
class WatermarkResult:
    agreement: float
    n: int
    p_value: float
    verified: bool

    def __str__(self) -> str:
        verdict = "carries the watermark" if self.verified else "shows no watermark"
        return (f"{verdict}: agrees with {self.agreement:.0%} of {self.n} secret trigger labels "
                f"(chance 50%, binomial p = {self.p_value:.2g})")


def make_credit_triggers(X_train, n: int = 100, seed: int = 1234) -> Watermark:
    """Trigger rows: every column drawn uniformly within its training range (integers rounded),
    labels drawn at random. Such rows are unlike any real client, so memorising them costs the
    model little on real data."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    cols = {}
    for name in X_train.columns:
        col = X_train[name].to_numpy(dtype=float)
        values = rng.uniform(col.min(), col.max(), n)
        if np.all(np.mod(col, 1) == 0):
            values = np.round(values)
        cols[name] = values
    return Watermark(pd.DataFrame(cols)[list(X_train.columns)], rng.integers(0, 2, n))


def make_text_triggers(n: int = 60, words: int = 6, seed: int = 1234) -> Watermark:
    """Trigger sentences made of invented words (so they add new vocabulary only), random labels."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("bcdfghjklmnpqrstvwxz"))
    vowels = np.array(list("aeiou"))

    def word():
        return "".join(c + v for c, v in zip(rng.choice(letters, 3), rng.choice(vowels, 3)))

    texts = [" ".join(word() for _ in range(words)) for _ in range(n)]
    return Watermark(texts, rng.integers(0, 2, n))


def verify_watermark(model, watermark: Watermark, alpha: float = 1e-3) -> WatermarkResult:
    """Does `model` (anything with predict_proba, or a function inputs -> labels) agree with the
    secret trigger labels more often than chance? One-sided binomial test at level alpha."""
    from scipy.stats import binomtest

    if hasattr(model, "predict_proba"):
        predicted = np.asarray(model.predict_proba(watermark.inputs)).argmax(1)
    else:
        predicted = np.asarray(model(watermark.inputs))
    hits = int((predicted == watermark.labels).sum())
    n = len(watermark.labels)
    p = float(binomtest(hits, n, 0.5, alternative="greater").pvalue)
    return WatermarkResult(hits / n, n, p, p < alpha)
