"""Screening and completion by promise (pure functions of jointopt.search.promise)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jointopt.search.promise import (Screen, hypervolume, next_setting, screen_points,
                                     screen_size)


def test_the_screen_is_a_fraction_with_a_floor_and_a_ceiling():
    assert screen_size(316, 0.1, 4) == 32
    assert screen_size(30, 0.1, 4) == 4
    assert screen_size(3, 0.1, 4) == 3


def test_a_variant_right_on_every_screened_example_keeps_some_uncertainty():
    rows = [(np.ones(16), np.full(16, 10.0)), (np.array([0.0, 1.0] * 8), np.arange(16.0))]
    (acc1, se1, cost1), (acc2, se2, cost2) = screen_points(rows)
    assert (acc1, cost1) == (1.0, 10.0) and se1 == pytest.approx(0.25 / 4)
    assert acc2 == 0.5 and cost2 == 7.5
    assert se2 == pytest.approx(np.std(rows[1][0], ddof=1) / 4)


def test_hypervolume_counts_only_the_front():
    ref = 100.0
    assert hypervolume([(0.5, 20.0)], ref) == pytest.approx(0.5 * 80)
    # a dominated point adds nothing; a point past the reference adds nothing
    assert hypervolume([(0.5, 20.0), (0.4, 30.0), (0.9, 150.0)], ref) == pytest.approx(40)
    assert hypervolume([(0.5, 20.0), (0.8, 60.0)], ref) == pytest.approx(0.5 * 80 + 0.3 * 40)


def screen(acc: float, cost: float, remaining: float, m: int = 16) -> Screen:
    se = 0.25 / math.sqrt(m)
    return Screen(((acc, se, cost),), remaining)


def test_the_setting_that_adds_most_per_token_is_completed_first():
    front = [(0.3, 20.0)]
    screens = {"poor_cheap": screen(0.1, 25.0, 100.0),  # dominated even optimistically
               "fair": screen(0.5, 30.0, 1000.0),
               "good": screen(0.8, 30.0, 1000.0)}
    assert next_setting(screens, front, 0.5) == "good"
    # a cheaper completion can outweigh a larger gain
    screens["fair"] = screen(0.5, 30.0, 100.0)
    assert next_setting(screens, front, 0.5) == "fair"
    del screens["fair"], screens["good"]
    assert next_setting(screens, front, 0.5) is None


def test_equally_promising_settings_go_cheapest_first():
    screens = {"dear": screen(0.6, 40.0, 2000.0), "cheap": screen(0.6, 40.0, 500.0)}
    assert next_setting(screens, [], 0.5) == "cheap"


def test_nothing_is_completed_when_even_optimism_adds_nothing():
    front = [(0.9, 10.0)]
    screens = {"worse": screen(0.2, 30.0, 100.0), "also": screen(0.5, 20.0, 100.0)}
    assert next_setting(screens, front, 0.5) is None
    # more optimism can make a setting worth a look
    assert next_setting(screens, front, 20.0) is not None
    assert next_setting({}, [], 0.5) is None


def test_a_screen_survives_its_storage_form():
    s = Screen(((0.5, 0.1, 30.0), (0.6, 0.1, 50.0)), 1234.0)
    assert Screen.from_dict(s.to_dict()) == s
