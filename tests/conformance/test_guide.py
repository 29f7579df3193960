"""docs/writing-a-plugin.md lists every conformance case, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

from microbroker.conformance import BrokerConformance

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-plugin.md"


def _cases_in_the_guide() -> list[str]:
    text = GUIDE.read_text()
    table = text[text.index("### Every case") :]
    return re.findall(r"^\| `(test_\w+)` \|", table, re.M)


def test_the_guide_lists_every_case_of_the_suite_once() -> None:
    in_suite = {name for name in dir(BrokerConformance) if name.startswith("test_")}
    listed = _cases_in_the_guide()
    assert len(listed) == len(set(listed)), "a case is listed twice"
    missing = sorted(in_suite - set(listed))
    assert not missing, f"cases of the suite missing from {GUIDE.name}'s table: {missing}"
    unknown = sorted(set(listed) - in_suite)
    assert not unknown, f"{GUIDE.name} lists cases the suite does not have: {unknown}"
