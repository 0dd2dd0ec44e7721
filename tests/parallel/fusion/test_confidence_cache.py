"""The confidence map a process's chains share: made once per calibration object, never a stale one."""

from __future__ import annotations

import numpy as np

from imaxt_pipeline.algorithms.optics import Calibration, Trim
from imaxt_pipeline.parallel.fusion._blocks import _confidence


def test_confidence_made_once_per_calibration_and_remade_for_another():
    flat = np.ones((1, 20, 30), np.float32)
    first = Calibration(dark=np.zeros(1), flat=flat, trim=Trim(left=2))
    a = _confidence(first, (20, 30), 0.0)
    assert _confidence(first, (20, 30), 0.0) is a  # the same object: not recomputed
    np.testing.assert_array_equal(a, first.confidence((20, 30)))
    assert _confidence(first, (20, 30), 3.0) is not a  # another feather, another map
    np.testing.assert_array_equal(_confidence(first, (20, 30), 3.0), first.confidence((20, 30), feather=3.0))
    other = Calibration(dark=np.zeros(1), flat=flat, trim=Trim(top=5))  # equal shape, another trim
    b = _confidence(other, (20, 30), 0.0)
    np.testing.assert_array_equal(b, other.confidence((20, 30)))
    assert b[:5].max() == 0 and a[:5, 2:].min() == 1
