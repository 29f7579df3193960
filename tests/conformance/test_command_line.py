"""``python -m microbroker.conformance`` and the pytest11 plugin, driven as a user would."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_command_exits_zero_for_a_conforming_broker() -> None:
    result = run("-m", "microbroker.conformance", "--broker", "memory")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broker 'memory': conforms" in result.stdout


def test_command_names_the_closest_broker_for_a_typo() -> None:
    result = run("-m", "microbroker.conformance", "--broker", "memroy")
    assert result.returncode == 2
    assert "Did you mean 'memory'?" in result.stderr
    assert "pip install" not in result.stderr  # a typo of an installed broker


def test_command_names_the_package_of_an_unknown_broker() -> None:
    result = run("-m", "microbroker.conformance", "--broker", "xyzzy")
    assert result.returncode == 2
    assert "pip install microbroker-xyzzy" in result.stderr


def test_command_fails_when_a_case_fails() -> None:
    # An option the broker rejects makes every case that makes a broker fail.
    result = run(
        "-m",
        "microbroker.conformance",
        "--broker",
        "memory",
        "--option",
        "max_pending=0",
        "-k",
        "round_trip",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "does NOT conform" in result.stdout


def test_pytest_plugin_runs_the_suite_by_name() -> None:
    result = run(
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:asyncio",
        "-q",
        "--pyargs",
        "microbroker.conformance.run",
        "--microbroker-broker",
        "memory",
        "-k",
        "round_trip or broadcast",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
