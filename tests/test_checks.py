"""sgcl_plugin.checks: the shared argument checks, one message per invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgcl_plugin.checks import check_int, check_not_meta, check_number, check_range


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
