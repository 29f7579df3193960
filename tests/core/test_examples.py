"""The README's quick start and its test run as printed (examples/shop)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_start_test_passes_as_a_user_runs_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICRO_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "examples/shop", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT / "examples" / "shop")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
