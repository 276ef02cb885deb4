"""Simulated card transactions for a consortium of banks, with labelled fraud.

    frame = fraud.simulate_consortium(n_per_bank=15_000, seed=0)      # four banks
    X, y = fraud.split_xy(frame[frame.bank == "metro-retail"])
    poison = fraud.craft_poison(300, seed=1)                          # the poisoner's rows

No public card-fraud data set can be shipped offline with the kit, so the capstone lab uses
this simulator and says so. Every number below is a modelling choice, not a measurement; the
shapes follow what the fraud literature and card-scheme reports describe (heavy-tailed amounts,
fraud at well under 1% of transactions, a few recurring attack patterns).

One row is one transaction, described by nine numeric features (`FEATURES`):

- ``amount``: ``card average x category factor / 1.3 x lognormal noise (sigma 0.6)``, at
  least 0.5. The card's average amount is lognormal around the bank's ``amount_median``
  (sigma 0.5), so amounts are heavy-tailed; category factors run from 0.5 (pharmacy) to 4
  (travel, jewelry), and dividing by 1.3 keeps the typical purchase near the card's average.
- ``merchant_category``: index into `MERCHANT_CATEGORIES`, drawn from one mix for card-present
  and one for card-not-present purchases, tilted per bank by ``category_boost``.
- ``hour``: a day profile with lunch and evening peaks; a bank's ``night_share`` of legitimate
  purchases falls between 00:00 and 05:59 (night-shift workers, late online shopping).
- ``distance_km``: distance of the merchant (or, online, of the IP address) from the
  cardholder's home, lognormal around the bank's ``distance_km`` (sigma 0.9); a
  ``traveller_share`` of legitimate purchases is made hundreds of km from home (median 600).
- ``card_present``: Bernoulli with the bank's ``card_present`` share.
- ``new_device``: the device or browser has not been seen for this card before; a legitimate
  card-not-present purchase comes from one with probability ``new_device_rate`` (a new phone, a
  new laptop), a card-present one with probability 0.01 (a phone wallet set up that day).
- ``tx_last_hour``, ``tx_last_day``: the card's transactions in the previous hour and day. Each
  card has its own daily rate (lognormal around ``daily_tx``); each of the day's transactions
  fell in the last hour with probability 0.1; 3% of legitimate rows are shopping sprees with
  extra transactions in the last hour.
- ``amount_ratio``: amount divided by the card's average amount (the bank's running estimate of
  it, known to within about 10%).

Legitimate behaviour that looks like fraud is simulated on purpose, so the task is learnable
but not trivially separable: travellers (far from home), new devices, night shoppers, big
one-off purchases (1.5% of rows, 4-20x the card's average, on electronics, travel or jewelry),
app-store and subscription micro-payments (2% of card-not-present rows, 0.5-5 units) and
shopping sprees.

A bank's ``fraud_rate`` of its rows are fraud (each row independently), split over `PATTERNS`
by its ``pattern_mix``. Each pattern has a loud form and, for a ``QUIET_SHARE`` (30%) of its
frauds, a quiet one that imitates normal use more closely:

- ``card_testing``: a stolen card number is checked with tiny purchases before it is sold or
  used. Loud: 0.5-5 units, card not present, online retail (90%) or entertainment, a burst of
  4-20 transactions in the last hour, often a new device and a far-away IP address, any hour.
  Quiet: 1-15 units, 0-3 transactions in the last hour, the card's usual device and place.
- ``account_takeover``: a criminal logs into the cardholder's online account. Loud: new
  device, card not present, 5-30x the card's average, electronics, online retail or jewelry,
  55% at night, an IP address hundreds of km away. Quiet: 80% new device, 1.5-5x the average,
  daytime, nearby.
- ``stolen_card``: the physical card is used by a thief. Loud: card present, 100-2000 km from
  home, jewelry, electronics or ATM cash, 3-15x the average, 1-6 transactions in the last hour.
  Quiet: 15-150 km from home, 1.2-4x the average, everyday categories as well.

Overall the four `DEFAULT_BANKS` carry 0.5% fraud (0.3% to 0.7% per bank). Trained on about
60k transactions, gradient boosting reaches a held-out PR-AUC of roughly 0.7-0.8: the quiet
frauds and the look-alike legitimate rows keep it well below 1.

Random streams come from ``numpy.random.SeedSequence([seed, crc32(bank name)])``, so the same
(bank, n, seed) always gives the same frame, and a bank's rows do not depend on which other
banks are simulated or in what order.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["FEATURES", "LOG_FEATURES", "MERCHANT_CATEGORIES", "PATTERNS", "QUIET_SHARE", "INT_FEATURES", "BankProfile",
           "DEFAULT_BANKS", "EXTRA_BANKS", "banks", "simulate_bank", "simulate_consortium", "craft_poison",
           "split_xy"]

FEATURES = ["amount", "merchant_category", "hour", "distance_km", "card_present", "new_device",
            "tx_last_hour", "tx_last_day", "amount_ratio"]
LOG_FEATURES = ["amount", "distance_km", "amount_ratio", "tx_last_day", "tx_last_hour"]
MERCHANT_CATEGORIES = ("grocery", "fuel", "restaurant", "online_retail", "electronics", "travel", "jewelry",
                       "pharmacy", "entertainment", "cash_atm")
PATTERNS = ("card_testing", "account_takeover", "stolen_card")
QUIET_SHARE = 0.3

INT_FEATURES = ("merchant_category", "hour", "card_present", "new_device", "tx_last_hour", "tx_last_day")
_INT_FEATURES = INT_FEATURES
_CAT = {name: i for i, name in enumerate(MERCHANT_CATEGORIES)}
# Typical spend per category relative to the card's average purchase.
_CATEGORY_FACTOR = np.array([0.8, 1.0, 0.7, 1.0, 3.0, 4.0, 4.0, 0.5, 0.8, 1.8])
# Category mixes of legitimate purchases, before a bank's boost.
_CP_WEIGHTS = np.array([30, 14, 20, 0, 4, 2, 1.5, 8, 8, 12.5], dtype=float)
_CNP_WEIGHTS = np.array([4, 0, 8, 50, 10, 12, 2, 3, 11, 0], dtype=float)
# Daytime (06:00-23:59) profile with a lunch and an evening peak; night hours are 00:00-05:59.
_DAY_HOURS = np.arange(6, 24)
_DAY_WEIGHTS = np.array([2, 4, 6, 7, 8, 9, 11, 10, 8, 8, 9, 11, 12, 11, 9, 7, 5, 3], dtype=float)
_NIGHT_HOURS = np.arange(0, 6)
_NIGHT_WEIGHTS = np.array([6, 4, 3, 2, 2, 3], dtype=float)
_MIN_AMOUNT = 0.5


@dataclass(frozen=True)
class BankProfile:
    """One bank's customers: how they pay, and how much and which fraud hits them.

    `amount_median` is the median of the cards' average purchase (lognormal), `distance_km`
    the median distance from home of a local purchase, `night_share` the share of legitimate
    purchases made 00:00-05:59, `traveller_share` the share made while travelling (far from
    home), `new_device_rate` the chance that a legitimate online purchase comes from a new
    device, `daily_tx` the median card's transactions per day, `category_boost` multiplies the
    weight of named merchant categories, `pattern_mix` splits the fraud over `PATTERNS`.
    """

    name: str
    amount_median: float
    card_present: float
    distance_km: float
    night_share: float
    fraud_rate: float
    pattern_mix: dict
    traveller_share: float = 0.02
    new_device_rate: float = 0.03
    daily_tx: float = 2.0
    category_boost: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if not self.name:
            raise ValueError("A BankProfile needs a non-empty name.")
        for attr in ("card_present", "night_share", "traveller_share", "new_device_rate"):
            if not 0.0 <= getattr(self, attr) <= 1.0:
                raise ValueError(f"BankProfile {self.name!r}: {attr} is a share and must lie in [0, 1], "
                                 f"not {getattr(self, attr)}.")
        if not 0.0 <= self.fraud_rate < 0.5:
            raise ValueError(f"BankProfile {self.name!r}: fraud_rate must lie in [0, 0.5), not {self.fraud_rate}.")
        for attr in ("amount_median", "distance_km", "daily_tx"):
            if getattr(self, attr) <= 0:
                raise ValueError(f"BankProfile {self.name!r}: {attr} must be positive, not {getattr(self, attr)}.")
        unknown = set(self.pattern_mix) - set(PATTERNS)
        if unknown:
            raise ValueError(f"BankProfile {self.name!r}: unknown pattern(s) {sorted(unknown)} in pattern_mix; "
                             f"use names from {PATTERNS}.")
        if any(v < 0 for v in self.pattern_mix.values()) or not np.isclose(sum(self.pattern_mix.values()), 1.0):
            raise ValueError(f"BankProfile {self.name!r}: pattern_mix shares must be non-negative and sum to 1, "
                             f"not {sum(self.pattern_mix.values())}.")
        unknown = set(self.category_boost) - set(MERCHANT_CATEGORIES)
        if unknown:
            raise ValueError(f"BankProfile {self.name!r}: unknown categories {sorted(unknown)} in category_boost; "
                             f"use names from MERCHANT_CATEGORIES.")
        # Private copies, so that changing the caller's dicts later cannot change the profile.
        object.__setattr__(self, "pattern_mix", dict(self.pattern_mix))
        object.__setattr__(self, "category_boost", dict(self.category_boost))

    def __hash__(self):  # the dict fields are not hashable; equal profiles share a name
        return hash(self.name)


DEFAULT_BANKS = (
    BankProfile("metro-retail", amount_median=35.0, card_present=0.75, distance_km=4.0, night_share=0.05,
                fraud_rate=0.004, pattern_mix={"card_testing": 0.3, "account_takeover": 0.3, "stolen_card": 0.4},
                traveller_share=0.02, new_device_rate=0.03, daily_tx=2.5,
                category_boost={"grocery": 1.3, "restaurant": 1.3},
                description="urban everyday banking, mostly card-present"),
    BankProfile("rural-coop", amount_median=45.0, card_present=0.82, distance_km=18.0, night_share=0.03,
                fraud_rate=0.003, pattern_mix={"card_testing": 0.25, "account_takeover": 0.2, "stolen_card": 0.55},
                traveller_share=0.01, new_device_rate=0.02, daily_tx=1.5,
                category_boost={"fuel": 2.0, "online_retail": 0.5, "pharmacy": 1.3},
                description="longer trips to shop, fewer online purchases"),
    BankProfile("digital-first", amount_median=30.0, card_present=0.3, distance_km=6.0, night_share=0.09,
                fraud_rate=0.007, pattern_mix={"card_testing": 0.35, "account_takeover": 0.5, "stolen_card": 0.15},
                traveller_share=0.03, new_device_rate=0.05, daily_tx=3.5,
                category_boost={"online_retail": 1.5, "entertainment": 1.4},
                description="app-only bank, mostly card-not-present, more account takeover"),
    BankProfile("travel-premium", amount_median=120.0, card_present=0.6, distance_km=8.0, night_share=0.07,
                fraud_rate=0.006, pattern_mix={"card_testing": 0.15, "account_takeover": 0.3, "stolen_card": 0.55},
                traveller_share=0.12, new_device_rate=0.04, daily_tx=2.0,
                category_boost={"travel": 3.0, "jewelry": 2.0, "restaurant": 1.4, "electronics": 1.3},
                description="premium cards, high amounts, much travel, more stolen-card fraud"),
)
EXTRA_BANKS = (
    BankProfile("student-union", amount_median=18.0, card_present=0.55, distance_km=3.0, night_share=0.12,
                fraud_rate=0.005, pattern_mix={"card_testing": 0.45, "account_takeover": 0.35, "stolen_card": 0.2},
                traveller_share=0.04, new_device_rate=0.06, daily_tx=3.0,
                category_boost={"entertainment": 2.0, "restaurant": 1.5, "jewelry": 0.3, "travel": 0.5},
                description="small amounts, late hours, many new phones, more card testing"),
)
_ALL_BANKS = {b.name: b for b in DEFAULT_BANKS + EXTRA_BANKS}


def banks(n: int) -> tuple[BankProfile, ...]:
    """The first `n` banks of DEFAULT_BANKS + EXTRA_BANKS (n = 3, 4 or 5)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 3 <= n <= len(_ALL_BANKS):
        raise ValueError(f"banks(n) takes n = 3, 4 or 5 (the kit defines {len(_ALL_BANKS)} banks), not {n!r}.")
    return (DEFAULT_BANKS + EXTRA_BANKS)[:n]


def _profile(bank) -> BankProfile:
    if isinstance(bank, BankProfile):
        return bank
    if isinstance(bank, str) and bank in _ALL_BANKS:
        return _ALL_BANKS[bank]
    raise ValueError(f"Unknown bank {bank!r}: pass a BankProfile or one of {', '.join(_ALL_BANKS)}.")


def _check_n(n, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what} must be a whole number of transactions, at least 1; got {n!r}.")
    return int(n)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (e.g. seed=0); got {seed!r}.")
    return int(seed)


def _check_pattern(pattern) -> str:
    if pattern not in PATTERNS:
        raise ValueError(f"Unknown fraud pattern {pattern!r}: use one of {', '.join(PATTERNS)}.")
    return pattern


def _rng(seed: int, *names: str) -> np.random.Generator:
    # crc32 is stable across runs and platforms, unlike hash(str).
    return np.random.default_rng(np.random.SeedSequence([seed, *(zlib.crc32(s.encode()) for s in names)]))


def _pick(rng, weights, size: int) -> np.ndarray:
    """Indices drawn with probabilities proportional to `weights` (one weight row, or one per draw)."""
    weights = np.asarray(weights, dtype=float)
    cdf = np.cumsum(weights, axis=-1)
    u = rng.random(size) * cdf[..., -1]
    if weights.ndim == 1:
        return np.minimum(np.searchsorted(cdf, u, side="right"), len(weights) - 1)
    return np.minimum((cdf <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


def _categories(rng, names_weights: dict, size: int) -> np.ndarray:
    codes = np.array([_CAT[k] for k in names_weights])
    return codes[_pick(rng, list(names_weights.values()), size)]


def _log_uniform(rng, low: float, high: float, size: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def _hours(rng, night_share: float, size: int) -> np.ndarray:
    night = rng.random(size) < night_share
    return np.where(night, _NIGHT_HOURS[_pick(rng, _NIGHT_WEIGHTS, size)], _DAY_HOURS[_pick(rng, _DAY_WEIGHTS, size)])


def _legitimate(p: BankProfile, n: int, rng) -> dict:
    """n legitimate transactions of bank p, plus each card's average amount (`card_avg`)."""
    card_avg = p.amount_median * rng.lognormal(0.0, 0.5, n)
    present = rng.random(n) < p.card_present
    boost = np.array([p.category_boost.get(c, 1.0) for c in MERCHANT_CATEGORIES])
    cat = np.where(present, _pick(rng, _CP_WEIGHTS * boost, n), _pick(rng, _CNP_WEIGHTS * boost, n))
    # Factors are divided by their typical value so the ratio to the card's average centres near 1.
    ratio = _CATEGORY_FACTOR[cat] / 1.3 * rng.lognormal(0.0, 0.6, n)

    # Big one-off purchases: a television, a holiday, a ring.
    big = rng.random(n) < 0.015
    big_cat = _categories(rng, {"electronics": 5, "travel": 3, "jewelry": 2}, n)
    cat = np.where(big, big_cat, cat)
    ratio = np.where(big, _log_uniform(rng, 4.0, 20.0, n), ratio)
    amount = card_avg * ratio

    # App-store and subscription micro-payments, which resemble card testing.
    micro = ~present & (rng.random(n) < 0.02)
    cat = np.where(micro, _categories(rng, {"online_retail": 6, "entertainment": 4}, n), cat)
    amount = np.where(micro, rng.uniform(0.5, 5.0, n), amount)

    hour = _hours(rng, p.night_share, n)
    distance = p.distance_km * rng.lognormal(0.0, 0.9, n)
    travelling = rng.random(n) < p.traveller_share
    distance = np.where(travelling, 600.0 * rng.lognormal(0.0, 0.8, n), distance)
    new_device = rng.random(n) < np.where(present, 0.01, p.new_device_rate)

    daily_rate = p.daily_tx * rng.lognormal(0.0, 0.6, n)
    tx_day = rng.poisson(daily_rate)
    tx_hour = rng.binomial(tx_day, 0.1)
    spree = rng.poisson(2.0, n) * (rng.random(n) < 0.03)
    return dict(amount=amount, merchant_category=cat, hour=hour, distance_km=distance, card_present=present,
                new_device=new_device, tx_last_hour=tx_hour + spree, tx_last_day=tx_day + spree, card_avg=card_avg)


def _fraud(pattern: str, p: BankProfile, m: int, rng, card_avg: np.ndarray) -> dict:
    """m frauds of one pattern against bank p's cards (whose average amounts are `card_avg`)."""
    quiet = rng.random(m) < QUIET_SHARE
    normal_distance = p.distance_km * rng.lognormal(0.0, 0.9, m)
    normal_hour = _hours(rng, p.night_share, m)
    if pattern == "card_testing":
        amount = np.where(quiet, rng.uniform(1.0, 15.0, m), rng.uniform(0.5, 5.0, m))
        cat = _categories(rng, {"online_retail": 9, "entertainment": 1}, m)
        present = np.zeros(m, dtype=bool)
        hour = np.where(quiet, normal_hour, rng.integers(0, 24, m))  # scripts run round the clock
        distance = np.where(quiet, normal_distance, 1500.0 * rng.lognormal(0.0, 1.0, m))
        new_device = rng.random(m) < np.where(quiet, p.new_device_rate, 0.6)
        tx_hour = np.where(quiet, rng.integers(0, 4, m), rng.integers(4, 21, m))
        tx_day = tx_hour + rng.poisson(np.where(quiet, 2.0, 5.0))
    elif pattern == "account_takeover":
        ratio = np.where(quiet, rng.uniform(1.5, 5.0, m), _log_uniform(rng, 5.0, 30.0, m))
        amount = card_avg * ratio
        cat = _categories(rng, {"electronics": 5, "online_retail": 3, "jewelry": 2}, m)
        present = np.zeros(m, dtype=bool)
        night = rng.integers(0, 6, m)
        hour = np.where(quiet, _DAY_HOURS[_pick(rng, _DAY_WEIGHTS, m)],
                        np.where(rng.random(m) < 0.55, night, rng.integers(6, 24, m)))
        distance = np.where(quiet, normal_distance, 500.0 * rng.lognormal(0.0, 1.0, m))
        new_device = np.where(quiet, rng.random(m) < 0.8, True)
        tx_hour = rng.poisson(np.where(quiet, 0.3, 1.0))
        tx_day = tx_hour + rng.poisson(2.0, m)
    else:  # stolen_card
        ratio = np.where(quiet, rng.uniform(1.2, 4.0, m), _log_uniform(rng, 3.0, 15.0, m))
        amount = card_avg * ratio
        loud_cat = _categories(rng, {"jewelry": 3, "electronics": 4, "cash_atm": 3}, m)
        quiet_cat = _categories(rng, {"jewelry": 1, "electronics": 2, "cash_atm": 2, "grocery": 2, "fuel": 2,
                                      "restaurant": 1}, m)
        cat = np.where(quiet, quiet_cat, loud_cat)
        present = np.ones(m, dtype=bool)
        hour = np.where(quiet, normal_hour, _hours(rng, 0.15, m))
        distance = np.where(quiet, _log_uniform(rng, 15.0, 150.0, m), _log_uniform(rng, 100.0, 2000.0, m))
        new_device = rng.random(m) < 0.01
        tx_hour = np.where(quiet, rng.poisson(0.8, m), rng.integers(1, 7, m))
        tx_day = tx_hour + rng.poisson(1.5, m)
    return dict(amount=amount, merchant_category=cat, hour=hour, distance_km=distance, card_present=present,
                new_device=new_device, tx_last_hour=tx_hour, tx_last_day=tx_day)


def _frame(cols: dict, card_avg: np.ndarray, is_fraud, pattern, bank: str, ids) -> pd.DataFrame:
    amount = np.maximum(np.round(cols["amount"], 2), _MIN_AMOUNT)
    # The bank knows a card's average only from its history: a running mean, off by about 10%.
    known_avg = card_avg * np.exp(cols["_avg_noise"])
    data = {
        "amount": amount.astype(np.float64),
        "merchant_category": cols["merchant_category"],
        "hour": cols["hour"],
        "distance_km": np.round(cols["distance_km"], 2).astype(np.float64),
        "card_present": cols["card_present"],
        "new_device": cols["new_device"],
        "tx_last_hour": cols["tx_last_hour"],
        "tx_last_day": cols["tx_last_day"],
        "amount_ratio": (amount / known_avg).astype(np.float64),
    }
    for name in _INT_FEATURES:
        data[name] = np.asarray(data[name]).astype(np.int64)
    frame = pd.DataFrame(data, columns=FEATURES)
    frame["is_fraud"] = np.asarray(is_fraud, dtype=np.int64)
    frame["pattern"] = pattern
    frame["bank"] = bank
    frame["tx_id"] = ids
    return frame


def simulate_bank(bank: BankProfile | str, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` simulated transactions of one bank: FEATURES, is_fraud (0/1), pattern, bank, tx_id.

    `bank` is a BankProfile or the name of one in DEFAULT_BANKS / EXTRA_BANKS. The same
    (bank, n, seed) always gives the same frame.
    """
    p = _profile(bank)
    n, seed = _check_n(n), _check_seed(seed)
    rng = _rng(seed, p.name)
    cols = _legitimate(p, n, rng)
    card_avg = cols.pop("card_avg")
    is_fraud = rng.random(n) < p.fraud_rate
    mix = [p.pattern_mix.get(k, 0.0) for k in PATTERNS]
    which = _pick(rng, mix, n)
    pattern = np.where(is_fraud, np.array(PATTERNS, dtype=object)[which], "none").astype(object)
    for k, name in enumerate(PATTERNS):
        rows = np.flatnonzero(is_fraud & (which == k))
        if rows.size:
            for col, values in _fraud(name, p, rows.size, rng, card_avg[rows]).items():
                cols[col] = cols[col].astype(np.result_type(cols[col], values))
                cols[col][rows] = values
    cols["_avg_noise"] = rng.normal(0.0, 0.1, n)
    width = max(6, len(str(n - 1)))
    ids = [f"{p.name}-{i:0{width}d}" for i in range(n)]
    return _frame(cols, card_avg, is_fraud, pattern, p.name, ids)


def simulate_consortium(n_per_bank: int, seed: int = 0, banks=DEFAULT_BANKS) -> pd.DataFrame:
    """`n_per_bank` transactions from each bank (profiles or names), concatenated in that order."""
    n_per_bank, seed = _check_n(n_per_bank, "n_per_bank"), _check_seed(seed)
    if isinstance(banks, (str, BankProfile)):
        banks = [banks]
    profiles = [_profile(b) for b in banks]
    if not profiles:
        raise ValueError("simulate_consortium needs at least one bank, e.g. banks=DEFAULT_BANKS.")
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ValueError(f"Each bank may appear once in a consortium (tx_id must stay unique); got {names}.")
    return pd.concat([simulate_bank(p, n_per_bank, seed) for p in profiles], ignore_index=True)


def craft_poison(n: int, seed: int = 0, pattern: str = "account_takeover") -> pd.DataFrame:
    """The poisoning attacker's rows: `n` frauds of `pattern`, labelled legitimate.

    Trained on them, a model learns that this kind of fraud is normal. Rows are drawn like the
    loud and quiet frauds of simulate_bank against a metro-retail-like customer base; is_fraud
    is 0, pattern is "poison", bank is "" (the caller sets the bank that injects them) and
    tx_id starts with "poison-".
    """
    n, seed, pattern = _check_n(n), _check_seed(seed), _check_pattern(pattern)
    p = DEFAULT_BANKS[0]
    rng = _rng(seed, "poison", pattern)
    card_avg = p.amount_median * rng.lognormal(0.0, 0.5, n)
    cols = _fraud(pattern, p, n, rng, card_avg)
    cols["_avg_noise"] = rng.normal(0.0, 0.1, n)
    width = max(6, len(str(n - 1)))
    ids = [f"poison-{pattern}-{i:0{width}d}" for i in range(n)]
    return _frame(cols, card_avg, np.zeros(n, dtype=np.int64), "poison", "", ids)


def split_xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The feature columns (FEATURES, in order) and the labels as an int64 array."""
    missing = [c for c in FEATURES + ["is_fraud"] if c not in frame.columns]
    if missing:
        raise ValueError(f"split_xy needs a frame from simulate_bank / simulate_consortium; it lacks {missing}.")
    return frame[FEATURES].copy(), frame["is_fraud"].to_numpy(dtype=np.int64)
