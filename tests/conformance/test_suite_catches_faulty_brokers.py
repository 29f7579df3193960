"""The conformance suite fails brokers that break what they declare (and passes the reference)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from faulty_brokers import FAULTY

SOURCE = (Path(__file__).parent / "faulty_brokers.py").read_text()


def run_suite(pytester: pytest.Pytester, broker: str) -> tuple[set[str], set[str]]:
    """Run the whole suite against ``broker`` in a subprocess; return (passed, failed) cases."""
    pytester.makepyfile(faulty_brokers=SOURCE)
    pytester.makepyfile(
        test_run=f"""
import pytest
from microbroker.brokers.memory import MemoryBroker
from faulty_brokers import *
from microbroker.conformance import BrokerConformance

class TestSuite(BrokerConformance):
    delivery_timeout = 3.0
    quiet_period = 0.3

    @pytest.fixture
    def broker_factory(self):
        return lambda: {broker}()
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:asyncio", "-p", "no:cacheprovider", "-rA")
    text = result.stdout.str()
    passed = set(re.findall(r"^PASSED \S+::TestSuite::(test_\w+)", text, re.M))
    failed = set(re.findall(r"^FAILED \S+::TestSuite::(test_\w+)", text, re.M))
    assert passed or failed, f"the suite did not run:\n{text[-3000:]}"
    return passed, failed


def test_the_reference_memory_broker_conforms(pytester: pytest.Pytester) -> None:
    passed, failed = run_suite(pytester, "MemoryBroker")
    assert not failed
    assert "test_no_message_lost" in passed
    assert "test_nack_leads_to_redelivery" in passed


@pytest.mark.parametrize("broker", FAULTY, ids=lambda cls: cls.__name__)
def test_the_suite_fails_a_faulty_broker(pytester: pytest.Pytester, broker: type) -> None:
    _, failed = run_suite(pytester, broker.__name__)
    expected = set(FAULTY[broker])
    assert expected <= failed, (
        f"{broker.__name__} ({broker.__doc__}) should fail {sorted(expected)}, "
        f"but the failures were {sorted(failed)}"
    )
