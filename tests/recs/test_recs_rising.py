"""The 'rise' source: recent popularity in excess of an item's usual share (pure)."""

from __future__ import annotations

import pytest

from app.recs import calls as rec_calls
from app.recs.candidates import rising_items
from app.recs.config import DEFAULT_WEIGHTS


def test_a_steady_best_seller_is_not_rising_and_a_seasonal_item_is() -> None:
    # Recent popularity vs long-run (usual) popularity of three items: the best seller sells
    # at its usual share, the lantern at three times its share, the mug below it.
    recent = [("bestseller", 1.0), ("lantern", 0.6), ("mug", 0.1)]
    usual = {"bestseller": 500.0, "lantern": 100.0, "mug": 150.0}
    got = dict(rising_items(recent, usual, 10))
    # shares of usual: 500/750, 100/750, 150/750; recent total 1.7
    assert got["lantern"] == pytest.approx(1.0)  # the largest excess is normalised to 1
    excess_lantern = 0.6 - 1.7 * 100 / 750
    excess_best = 1.0 - 1.7 * 500 / 750
    assert excess_best < 0 and "bestseller" not in got
    assert "mug" not in got  # 0.1 < 1.7 * 150 / 750
    assert excess_lantern > 0


def test_an_item_without_a_usual_rate_counts_all_its_recent_popularity() -> None:
    got = rising_items([("old", 1.0), ("brand-new", 0.5)], {"old": 10.0}, 10)
    assert got == [("brand-new", 1.0)]  # 'old' holds all the usual share: excess 1 - 1.5 < 0


def test_rising_keeps_the_best_n_and_handles_empty_inputs() -> None:
    recent = [(f"i{k}", 1.0) for k in range(5)]
    assert len(rising_items(recent, {}, 3)) == 3
    assert rising_items([], {"a": 1.0}, 3) == []
    assert rising_items([("a", 0.0)], {}, 3) == []


def test_rise_is_a_known_source_with_code_zero_for_returning_shoppers_only() -> None:
    assert rec_calls.SOURCE_CODE["rise"] == 0
    assert sorted(rec_calls.SOURCE_CODE.values()) == list(range(10))
    # chosen on validation: it cost the cold-start lists (docs/recommendations.md)
    assert DEFAULT_WEIGHTS["rise"] > 0 and DEFAULT_WEIGHTS["collab.rise"] > 0
    assert DEFAULT_WEIGHTS["cold.rise"] == 0 and DEFAULT_WEIGHTS["content.rise"] == 0
