"""The card-transaction simulator behind the federated fraud capstone."""
import dataclasses
import time

import numpy as np
import pandas as pd
import pytest

from labkit import fraud

COLUMNS = fraud.FEATURES + ["is_fraud", "pattern", "bank", "tx_id"]


@pytest.fixture(scope="module")
def consortium():
    # 200k transactions over the four default banks: about 1000 frauds.
    return fraud.simulate_consortium(50_000, seed=0)


def test_api_names():
    assert fraud.FEATURES == ["amount", "merchant_category", "hour", "distance_km", "card_present", "new_device",
                              "tx_last_hour", "tx_last_day", "amount_ratio"]
    assert set(fraud.LOG_FEATURES) == {"amount", "distance_km", "amount_ratio", "tx_last_day", "tx_last_hour"}
    assert fraud.PATTERNS == ("card_testing", "account_takeover", "stolen_card")
    assert len(fraud.MERCHANT_CATEGORIES) == 10 and len(set(fraud.MERCHANT_CATEGORIES)) == 10
    assert len(fraud.DEFAULT_BANKS) == 4 and len(fraud.EXTRA_BANKS) == 1
    for bank in fraud.DEFAULT_BANKS + fraud.EXTRA_BANKS:
        assert sum(bank.pattern_mix.values()) == pytest.approx(1.0)
        assert 0.003 <= bank.fraud_rate <= 0.008


def test_banks_selects_the_first_n():
    names = [b.name for b in fraud.DEFAULT_BANKS + fraud.EXTRA_BANKS]
    for n in (3, 4, 5):
        assert [b.name for b in fraud.banks(n)] == names[:n]
    for bad in (2, 6, 0, "4"):
        with pytest.raises(ValueError, match="n = 3, 4 or 5"):
            fraud.banks(bad)


def test_fraud_rates_overall_and_per_bank(consortium):
    overall = consortium.is_fraud.mean()
    assert 0.003 <= overall <= 0.008
    for bank in fraud.DEFAULT_BANKS:
        rows = consortium[consortium.bank == bank.name]
        p = bank.fraud_rate
        tolerance = 4 * np.sqrt(p * (1 - p) / len(rows))  # binomial, 4 standard errors
        assert abs(rows.is_fraud.mean() - p) <= tolerance, bank.name


def test_patterns_present_and_consistent_with_labels(consortium):
    counts = consortium.pattern.value_counts()
    for pattern in fraud.PATTERNS:
        assert counts.get(pattern, 0) >= 50, pattern
    assert ((consortium.pattern == "none") == (consortium.is_fraud == 0)).all()
    assert set(consortium.pattern) == set(fraud.PATTERNS) | {"none"}


def test_patterns_look_like_their_description(consortium):
    by = {p: consortium[consortium.pattern == p] for p in fraud.PATTERNS + ("none",)}
    testing, takeover, stolen, legit = (by[p] for p in ("card_testing", "account_takeover", "stolen_card", "none"))
    assert testing.amount.median() < 5 and testing.card_present.eq(0).all()
    assert testing.tx_last_hour.median() >= 4 > legit.tx_last_hour.quantile(0.99)
    assert takeover.card_present.eq(0).all() and takeover.new_device.mean() > 0.85
    assert takeover.amount_ratio.median() > 4
    assert (takeover.hour < 6).mean() > 2 * (legit.hour < 6).mean()
    assert stolen.card_present.eq(1).all() and stolen.distance_km.median() > 100
    assert stolen.amount_ratio.median() > 3 and stolen.tx_last_hour.mean() > 2


def test_legitimate_rows_share_fraud_traits(consortium):
    # Without look-alikes the task would be trivially separable.
    legit = consortium[consortium.is_fraud == 0]
    assert (legit.distance_km > 300).mean() > 0.01           # travellers
    assert ((legit.new_device == 1) & (legit.card_present == 0)).sum() > 500   # new phones
    assert (legit.hour < 6).mean() > 0.03                    # night shoppers
    assert (legit.amount_ratio > 5).mean() > 0.005           # big one-off purchases
    assert ((legit.amount < 5) & (legit.card_present == 0)).sum() > 500        # micro-payments
    assert (legit.tx_last_hour >= 4).sum() > 100             # shopping sprees
    frauds = consortium[consortium.is_fraud == 1]
    assert (frauds.amount_ratio.between(0.5, 4) & (frauds.distance_km < 150)).mean() > 0.1   # quiet frauds


def test_bank_mixes_differ(consortium):
    stats = consortium.groupby("bank").agg(cp=("card_present", "mean"), amount=("amount", "median"),
                                           distance=("distance_km", "median"), new=("new_device", "mean"),
                                           fraud=("is_fraud", "mean"))
    assert stats.cp["metro-retail"] > stats.cp["digital-first"] + 0.3
    assert stats.amount["travel-premium"] > 2.5 * stats.amount["metro-retail"]
    assert stats.distance["rural-coop"] > 3 * stats.distance["metro-retail"]
    online = consortium.merchant_category == fraud.MERCHANT_CATEGORIES.index("online_retail")
    assert online[consortium.bank == "rural-coop"].mean() < online[consortium.bank == "digital-first"].mean() / 2
    mix = consortium[consortium.is_fraud == 1].groupby("bank").pattern.value_counts(normalize=True)
    assert mix["digital-first"]["account_takeover"] > mix["rural-coop"]["account_takeover"]
    assert mix["travel-premium"]["stolen_card"] > mix["digital-first"]["stolen_card"]


def test_values_and_dtypes(consortium):
    frame = consortium
    assert list(frame.columns) == COLUMNS
    for col in fraud.FEATURES:
        expected = np.float64 if col in ("amount", "distance_km", "amount_ratio") else np.int64
        assert frame[col].dtype == expected, col
    assert frame.is_fraud.dtype == np.int64
    assert not frame[fraud.FEATURES].isna().any().any()
    assert (frame.amount > 0).all() and (frame.amount_ratio > 0).all() and (frame.distance_km >= 0).all()
    assert frame.merchant_category.between(0, 9).all() and frame.hour.between(0, 23).all()
    assert frame.card_present.isin([0, 1]).all() and frame.new_device.isin([0, 1]).all()
    assert (frame.tx_last_hour >= 0).all() and (frame.tx_last_day >= frame.tx_last_hour).all()
    assert frame.is_fraud.isin([0, 1]).all()
    assert frame.tx_id.is_unique
    assert frame.tx_id.iloc[0] == "metro-retail-000000"
    assert (frame.tx_id.str.rsplit("-", n=1).str[0] == frame.bank).all()


def test_reproducible_and_seed_dependent():
    a = fraud.simulate_bank("metro-retail", 3000, seed=7)
    pd.testing.assert_frame_equal(a, fraud.simulate_bank("metro-retail", 3000, seed=7))
    pd.testing.assert_frame_equal(a, fraud.simulate_bank(fraud.DEFAULT_BANKS[0], 3000, seed=7))
    b = fraud.simulate_bank("metro-retail", 3000, seed=8)
    assert not np.allclose(a.amount, b.amount)


def test_bank_independent_of_the_other_banks():
    alone = fraud.simulate_bank("digital-first", 2000, seed=3)
    for banks in (["metro-retail", "digital-first"], ["digital-first", "travel-premium", "rural-coop"],
                  fraud.banks(5)):
        together = fraud.simulate_consortium(2000, seed=3, banks=banks)
        part = together[together.bank == "digital-first"].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, alone)
    # Different banks get different streams even with the same settings.
    twin = dataclasses.replace(fraud.DEFAULT_BANKS[2], name="digital-twin")
    assert not np.allclose(fraud.simulate_bank(twin, 2000, seed=3).amount, alone.amount)


def test_custom_profile_and_validation():
    mine = fraud.BankProfile("fraud-heavy", amount_median=50, card_present=0.5, distance_km=5, night_share=0.05,
                             fraud_rate=0.1, pattern_mix={"stolen_card": 1.0})
    frame = fraud.simulate_bank(mine, 5000, seed=0)
    assert 0.08 < frame.is_fraud.mean() < 0.12
    assert set(frame.pattern) == {"none", "stolen_card"}
    assert hash(mine) == hash(fraud.BankProfile(**mine.__dict__))
    with pytest.raises(ValueError, match="sum to 1"):
        fraud.BankProfile("x", 50, 0.5, 5, 0.05, 0.01, {"stolen_card": 0.5})
    with pytest.raises(ValueError, match="unknown pattern"):
        fraud.BankProfile("x", 50, 0.5, 5, 0.05, 0.01, {"phishing": 1.0})
    with pytest.raises(ValueError, match="card_present"):
        fraud.BankProfile("x", 50, 1.5, 5, 0.05, 0.01, {"stolen_card": 1.0})


def test_craft_poison_is_fraud_labelled_legitimate():
    poison = fraud.craft_poison(2000, seed=1)
    assert list(poison.columns) == COLUMNS
    assert (poison.is_fraud == 0).all() and (poison.pattern == "poison").all() and (poison.bank == "").all()
    assert poison.tx_id.str.startswith("poison-").all() and poison.tx_id.is_unique
    assert poison.new_device.mean() > 0.85 and poison.card_present.eq(0).all()
    assert poison.amount_ratio.median() > 4
    reference = fraud.simulate_bank("metro-retail", 2000, seed=0)
    assert (poison.dtypes == reference.dtypes).all()
    pd.testing.assert_frame_equal(poison, fraud.craft_poison(2000, seed=1))
    testing = fraud.craft_poison(500, seed=1, pattern="card_testing")
    assert testing.amount.median() < 5 and testing.tx_last_hour.median() >= 4
    stolen = fraud.craft_poison(500, seed=1, pattern="stolen_card")
    assert stolen.card_present.eq(1).all() and stolen.distance_km.median() > 100


def test_split_xy():
    frame = fraud.simulate_consortium(500, seed=0, banks=fraud.banks(3))
    X, y = fraud.split_xy(frame)
    assert list(X.columns) == fraud.FEATURES and len(X) == 1500
    assert y.dtype == np.int64 and np.array_equal(y, frame.is_fraud.to_numpy())
    with pytest.raises(ValueError, match="lacks"):
        fraud.split_xy(frame.drop(columns="is_fraud"))


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="at least 1"):
        fraud.simulate_bank("metro-retail", 0)
    with pytest.raises(ValueError, match="at least 1"):
        fraud.craft_poison(-5)
    with pytest.raises(ValueError, match="metro-retail, rural-coop, digital-first, travel-premium, student-union"):
        fraud.simulate_bank("big-bank", 100)
    with pytest.raises(ValueError, match="card_testing, account_takeover, stolen_card"):
        fraud.craft_poison(10, pattern="phishing")
    with pytest.raises(ValueError, match="non-negative integer"):
        fraud.simulate_bank("metro-retail", 100, seed=-1)
    with pytest.raises(ValueError, match="non-negative integer"):
        fraud.simulate_consortium(100, seed=-1)
    with pytest.raises(ValueError, match="once"):
        fraud.simulate_consortium(100, banks=["metro-retail", "metro-retail"])
    with pytest.raises(ValueError, match="Unknown bank"):
        fraud.simulate_consortium(100, banks=["metro-retail", "nowhere"])


def test_fast_enough():
    start = time.perf_counter()
    fraud.simulate_bank("travel-premium", 60_000, seed=0)
    # Typically about 0.2 s; the bound only catches a slow, non-vectorised rewrite on a busy machine.
    assert time.perf_counter() - start < 5
