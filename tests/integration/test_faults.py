"""Nothing counted twice, nothing lost without a trace, the embedded driver's answer: one run of each fault.

The harness is `bench/faults.py` (which runs each fault many times and prints the strict tally: 0 lost); here
each fault runs once, on input produced mostly before the first worker starts (a backlog), the rest after the
fault.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import faults

pytestmark = [pytest.mark.kafka, pytest.mark.fault_harness]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("fault", faults.FAULTS)
def test_a_fault_neither_loses_nor_double_counts_and_matches_the_embedded_driver(fault, kafka_bootstrap, tmp_path):
    result = faults.run_fault(fault, kafka_bootstrap, tmp_path)
    assert result.error is None, result.error
    assert result.double == 0, f"{result.counted:,} counted of {result.expected:,}"
    assert result.lost == 0, f"{result.lost:,} events lost ({result.reported_lost:,} reported lost by stage 2)"
    assert 0 < result.at_fault < result.expected, "the fault came while the worker was in the stream"
    assert result.differences == []
    assert result.duplicate_transitions == 0, "outputs commit exactly once: no transition may be sent twice"
