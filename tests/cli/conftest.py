"""Fixtures of the command-line tests: a private http registry and a runner per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import Background, Cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    registry = tmp_path / "registry"
    registry.mkdir(mode=0o700)
    return Cli(registry)


@pytest.fixture
def background() -> Iterator[list[Background]]:
    """Commands a test leaves running; killed at the end whatever happened."""
    started: list[Background] = []
    yield started
    for proc in started:
        proc.stop()
