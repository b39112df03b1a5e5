"""Nothing lost, nothing counted twice, the embedded driver's answer: one run of each fault on the real broker.

The harness is `bench/faults.py` (which runs each fault many times and prints the tally); here each fault runs
once, on input produced mostly before the first worker starts (a backlog), the rest after the fault.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import faults  # noqa: E402

pytestmark = pytest.mark.kafka


@pytest.mark.timeout(900)
@pytest.mark.parametrize("fault", faults.FAULTS)
def test_a_fault_neither_loses_nor_double_counts_and_matches_the_embedded_driver(fault, kafka_bootstrap, tmp_path):
    result = faults.run_fault(fault, kafka_bootstrap, tmp_path)
    assert result.error is None, result.error
    assert (result.lost, result.double) == (0, 0), f"{result.counted:,} counted of {result.expected:,}"
    assert 0 < result.at_fault < result.expected, "the fault came while the worker was in the stream"
    assert result.differences == []
