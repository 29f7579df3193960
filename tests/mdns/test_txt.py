"""go-micro's TXT record, against records Go itself made and, where Go is installed, Go live.

``golden/txt_records.json`` was written by ``golden/make_golden.py``, which runs
``golden/gomicro_txt.go``: go-micro's record rules (``registry/mdns_registry.go``:
``hex(zlib(json.Marshal(mdnsTxt)))`` in 255-character strings) on Go's own
encoding/json, compress/zlib and encoding/hex.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

import pytest
from mdns_helpers import GOLDEN, run_go_txt

from microbroker_mdns import txt
from microbroker_mdns.txt import TxtError, TxtRecord

GOLDEN_DATA = json.loads(GOLDEN.read_text())
RECORDS = GOLDEN_DATA["records"]


def _inflate(strings: list[str]) -> bytes:
    return zlib.decompress(bytes.fromhex("".join(strings)))


def _record(case: dict[str, Any]) -> TxtRecord:
    return TxtRecord(
        case["service"], case["version"], dict(case["metadata"] or {}), case.get("endpoints")
    )


@pytest.mark.parametrize("case", RECORDS, ids=[r["name"] for r in RECORDS])
def test_go_records_decode(case: dict[str, Any]) -> None:
    """What Go wrote, we read: service, version, metadata (Go's nil map is empty), endpoints."""
    record = txt.decode(case["go_strings"])
    assert record == _record(case)


@pytest.mark.parametrize(
    "case", [r for r in RECORDS if not r.get("decode_only")], ids=lambda r: r["name"]
)
def test_our_json_is_gos_byte_for_byte(case: dict[str, Any]) -> None:
    """The JSON inside our record is exactly the bytes Go's json.Marshal made."""
    assert _inflate(case["go_strings"]) == case["go_json"].encode()
    assert txt.marshal(_record(case)) == case["go_json"].encode()
    ours = txt.encode(_record(case))
    assert _inflate(ours) == case["go_json"].encode()


@pytest.mark.parametrize("case", RECORDS, ids=[r["name"] for r in RECORDS])
def test_strings_are_cut_as_go_cuts_them(case: dict[str, Any]) -> None:
    """Lower-case hex in 255-character strings, the last one shorter (Go's and ours)."""
    for strings in (case["go_strings"], txt.encode(_record(case))):
        assert all(len(s) == txt.MAX_STRING for s in strings[:-1])
        assert 0 < len(strings[-1]) <= txt.MAX_STRING
        assert all(set(s) <= set("0123456789abcdef") for s in strings)
    assert len(case["go_strings"]) > 1 or len(case["go_strings"][0]) <= txt.MAX_STRING


def test_golden_covers_several_strings() -> None:
    assert max(len(r["go_strings"]) for r in RECORDS) >= 3


def test_backspace_and_form_feed_as_go_1_22_writes_them() -> None:
    """go-micro builds with Go 1.25; since 1.22 json.Marshal writes \\b and \\f so."""
    assert txt.go_string("\b\f\x0b") == '"\\b\\f\\u000b"'


def test_a_lone_surrogate_is_written_as_go_writes_invalid_utf8() -> None:
    assert txt.go_string("a\ud800b") == '"a\\ufffdb"'


def test_go_json_unmarshal_rules() -> None:
    """Field names fold case, the last duplicate wins, null is the zero value."""
    data = b'{"service":"a","SERVICE":"b","Version":null,"metadata":{"k":null},"x":1}'
    record = txt.decode([zlib.compress(data).hex()])
    assert record == TxtRecord("b", "", {"k": ""}, None)


@pytest.mark.parametrize(
    ("strings", "why"),
    [
        (["zz"], "not hex"),
        (["ab cd"], "not hex"),
        ([b"00ff".hex()], "not a zlib"),
        ([zlib.compress(b"[1]").hex()], "not an object"),
        ([zlib.compress(b'{"Metadata":{"k":1}}').hex()], "Metadata"),
        ([zlib.compress(b'{"Service":5}').hex()], "Service"),
        ([zlib.compress(b"{")[:-3].hex()], "truncated"),
        ([zlib.compress(b"\xff\xfe").hex()], "not JSON"),
    ],
)
def test_what_is_not_a_go_micro_record_is_refused(strings: list[str], why: str) -> None:
    with pytest.raises(TxtError, match=why):
        txt.decode(strings)


def test_a_zlib_bomb_is_refused() -> None:
    bomb = zlib.compress(b'{"Service":"' + b"a" * (txt.MAX_JSON + 10) + b'"}').hex()
    with pytest.raises(TxtError, match="more than"):
        txt.decode([bomb])


def test_rdata_round_trip_and_bad_lengths() -> None:
    strings = txt.encode(_record(RECORDS[2]))
    rdata = txt.to_rdata(strings)
    assert [s.decode() for s in txt.from_rdata(rdata)] == strings
    with pytest.raises(TxtError):
        txt.from_rdata(b"\x05abc")
    with pytest.raises(TxtError):
        txt.to_rdata(["a" * 256])


# Live Go: random records through Go's json.Marshal and back. -----------------------------

# Characters that take each of json.Marshal's paths. Go before 1.22 (Debian 12 ships 1.19)
# escaped \b and \f as \u0008 and \u000c: they are left out here and checked by the rule above.
_ALPHABET = (
    [chr(c) for c in range(0x20) if chr(c) not in "\b\f"]
    + list(" azAZ09\"\\/<>&'\x7f\x80\u00e9\u07ff\u0800\u2028\u2029\ufffd\uffff")
    + ["\U00010000", "\U0001f600", "\U0010ffff"]
)


def _random_records(count: int, seed: int) -> list[TxtRecord]:
    rng = random.Random(seed)

    def text() -> str:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 24)))

    return [
        TxtRecord(text(), text(), {text(): text() for _ in range(rng.randrange(0, 10))})
        for _ in range(count)
    ]


def test_random_records_match_go_live(go_txt: Path) -> None:
    """Go's json.Marshal makes our JSON's bytes, and Go decodes our records to the same fields."""
    records = _random_records(500, seed=22)
    lines = [{"service": r.service, "version": r.version, "metadata": r.metadata} for r in records]
    encoded = run_go_txt(go_txt, "encode", lines)
    for record, result in zip(records, encoded, strict=True):
        assert txt.marshal(record) == result["json"].encode("utf-8")
        assert txt.decode(result["strings"]) == record
    decoded = run_go_txt(go_txt, "decode", [{"strings": txt.encode(r)} for r in records])
    for record, result in zip(records, decoded, strict=True):
        assert "error" not in result, result
        assert result["json"].encode("utf-8") == txt.marshal(record)


def test_golden_file_matches_go_live(go_txt: Path) -> None:
    """The committed records are what this Go makes (the zlib bytes aside, which may vary)."""
    cases = [
        {k: r.get(k) for k in ("service", "version", "metadata", "endpoints")} for r in RECORDS
    ]
    for case, result in zip(RECORDS, run_go_txt(go_txt, "encode", cases), strict=True):
        assert result["json"] == case["go_json"]
