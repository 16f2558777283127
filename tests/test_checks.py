"""sgcl_plugin.checks: the shared argument checks, one message per invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgcl_plugin.checks import (
    WrongTypeError,
    check_feature_map,
    check_feature_shape,
    check_index,
    check_int,
    check_interval,
    check_not_meta,
    check_number,
    check_range,
)


def test_check_int() -> None:
    assert check_int("n", 3, 1) == 3 and check_int("n", np.int64(4), 1) == 4 and check_int("n", -2) == -2
    for bad in (0, 2.0, True, "3", None, np.float32(2)):
        with pytest.raises(ValueError, match=r"n must be an integer >= 1, got"):
            check_int("n", bad, 1)


def test_check_number() -> None:
    assert check_number("x", np.float32(0.5), 0) == 0.5 and check_number("x", 0, 0) == 0.0
    with pytest.raises(ValueError, match="x must be a finite number > 0, got 0"):
        check_number("x", 0, 0, strict=True)
    for bad in (float("nan"), float("inf"), -1.0, True, "1"):
        with pytest.raises(ValueError, match="x must be a finite number >= 0"):
            check_number("x", bad, 0)


def test_check_range() -> None:
    assert check_range("scale", (0.08, 1)) == (0.08, 1.0) and check_range("ratio", [np.float32(2), 2]) == (2.0, 2.0)
    for bad in (0.5, (1.0,), (1, 2, 3), ("a", 1), None):
        with pytest.raises(ValueError, match=r"scale must be a pair \(low, high\), got"):
            check_range("scale", bad)
    for bad in ((0.0, 1.0), (-1, 1), (2, 1), (0.1, float("inf")), (float("nan"), 1)):
        with pytest.raises(ValueError, match="scale must satisfy 0 < low <= high, got"):
            check_range("scale", bad)


def test_check_not_meta() -> None:
    check_not_meta(torch.zeros(2), "x")
    check_not_meta(None, "x")
    with pytest.raises(ValueError, match="x is a meta tensor"):
        check_not_meta(torch.empty(2, device="meta"), "x")


def test_a_wrong_type_is_a_type_error_and_a_value_error() -> None:
    """A float, a bool or a string where an integer (or a number) belongs: TypeError, and ValueError as the checks
    raised before; a value of the right type out of bounds: ValueError only."""
    for call in (lambda: check_int("n", 2.0, 1), lambda: check_int("n", True), lambda: check_number("x", "1")):
        with pytest.raises(TypeError) as err:
            call()
        assert isinstance(err.value, WrongTypeError) and isinstance(err.value, ValueError)
    for call in (lambda: check_int("n", 0, 1), lambda: check_number("x", float("nan"))):
        with pytest.raises(ValueError) as err:
            call()
        assert not isinstance(err.value, TypeError)


def test_check_index() -> None:
    assert (
        check_index("bank", 2, 3) == 2 and check_index("bank", -1, 3) == 2 and check_index("bank", np.int32(-3), 3) == 0
    )
    for bad in (3, -4, np.int64(10)):
        with pytest.raises(IndexError, match=r"Index -?\d+ is outside the bank of 3 items"):
            check_index("bank", bad, 3)
    for bad in (1.0, True, "1", None, np.float64(1)):
        with pytest.raises(TypeError, match="bank index must be an integer, got"):
            check_index("bank", bad, 3)


def test_check_interval() -> None:
    assert (
        check_interval("a", 0) == 0.0 and check_interval("a", 1) == 1.0 and check_interval("a", np.float32(0.5)) == 0.5
    )
    assert (
        check_interval("f", 0.0, 0, 1, high_open=True) == 0.0 and check_interval("f", 1.0, 0, 1, low_open=True) == 1.0
    )
    assert check_interval("m", 0.5, 0.5, 1) == 0.5 and check_interval("h", np.float64(0.5), 0, 0.5) == 0.5
    cases = [  # (value, low, high, low_open, high_open, the interval as the message writes it)
        (1.0, 0, 1, False, True, r"\[0, 1\)"),
        (0.0, 0, 1, True, False, r"\(0, 1\]"),
        (0.0, 0, 1, True, True, r"\(0, 1\)"),
        (-1e-9, 0, 1, False, False, r"\[0, 1\]"),
        (1.0000001, 0, 1, False, False, r"\[0, 1\]"),
        (0.49, 0.5, 1, False, False, r"\[0.5, 1\]"),
        (float("nan"), 0, 1, False, False, r"\[0, 1\]"),
        (float("inf"), 0, 1, False, False, r"\[0, 1\]"),
        (-float("inf"), 0, 1, False, False, r"\[0, 1\]"),
        (np.float32("nan"), 0, 1, False, False, r"\[0, 1\]"),
    ]
    for value, low, high, low_open, high_open, interval in cases:
        with pytest.raises(ValueError, match=rf"x must be a number in {interval}, got"):
            check_interval("x", value, low, high, low_open, high_open)
    for bad in (True, False, "0.5", None, 1j):
        with pytest.raises(TypeError, match=r"x must be a number in \[0, 1\], got"):
            check_interval("x", bad)


def test_check_range_with_an_upper_bound() -> None:
    assert check_range("object_scale", (0.5, 1.0), high=1) == (0.5, 1.0)
    for bad in ((0.5, 1.01), (0.2, float("inf")), (0.5, 0.2)):
        with pytest.raises(ValueError, match="object_scale must satisfy 0 < low <= high <= 1, got"):
            check_range("object_scale", bad, high=1)


def test_check_feature_shape_and_map() -> None:
    """One shape check (a 4-D map of >= 2 cells, values unread); the map check adds real data, dtype, finiteness."""
    good = torch.randn(2, 4, 3, 3)
    assert check_feature_shape(good) is good
    assert check_feature_shape(torch.zeros(1, 8, 1, 2, device="meta")).shape == (1, 8, 1, 2)  # no value read
    with pytest.raises(TypeError, match="features must be a torch.Tensor, got ndarray"):
        check_feature_shape(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="tokens_to_map"):
        check_feature_shape(torch.zeros(1, 9, 8))
    with pytest.raises(ValueError, match=r"features must have shape \(B, C, h, w\), got 2 dims"):
        check_feature_shape(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="1x1 grid: a cut needs at least 2 cells"):
        check_feature_shape(torch.zeros(1, 8, 1, 1))
    check_feature_map(good)
    bad = good.clone()
    bad[1, 0, 0, 0] = float("inf")
    check_feature_map(bad, values=False)  # finiteness is the caller's pass
    with pytest.raises(ValueError, match=r"NaN or Inf values \(images \[1\]"):
        check_feature_map(bad)
    with pytest.raises(ValueError, match="meta tensor"):
        check_feature_map(torch.zeros(1, 8, 3, 3, device="meta"))
    with pytest.raises(TypeError, match="floating point"):
        check_feature_map(torch.zeros(1, 8, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="1x1 grid"):
        check_feature_map(torch.zeros(1, 8, 1, 1))


def test_the_feature_checks_are_one_function_each() -> None:
    """affinity's public check is the checks module's; the backbone check reuses its shape test, adding the
    explanation for a backbone (pooling, heads, tokens) to whatever shape failure it names."""
    import sgcl_plugin.affinity as affinity
    from sgcl_plugin.features import check_feature_output

    assert affinity.check_feature_map is check_feature_map
    x = torch.zeros(1, 3, 32, 32)
    pair = (torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2))
    assert check_feature_output(pair, x) is pair
    for out in (torch.zeros(1, 8), torch.zeros(1, 8, 1, 1), torch.zeros(1, 16, 8), "a map"):
        with pytest.raises(ValueError, match="The backbone returned .* global pooling") as err:
            check_feature_output(out, x)
        with pytest.raises((TypeError, ValueError)) as cause:
            check_feature_shape(out)
        assert str(err.value.__cause__) == str(cause.value)  # the shape check's own failure, chained
