"""go-micro's JSON envelope (``microbroker.transport.encode_envelope`` / ``decode_envelope``)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microbroker.transport import decode_envelope, encode_envelope

#: ``json.Marshal(&broker.Message{Header: {"Micro-Topic": "t"}, Body: []byte("hi")})`` in Go.
GO_MARSHALLED = b'{"Header":{"Micro-Topic":"t"},"Body":"aGk="}'


def test_it_is_what_go_writes() -> None:
    assert encode_envelope({"Micro-Topic": "t"}, b"hi") == GO_MARSHALLED
    assert decode_envelope(GO_MARSHALLED) == ({"Micro-Topic": "t"}, b"hi")


def test_go_nils_and_missing_keys_are_empty() -> None:
    assert decode_envelope(b'{"Header":null,"Body":null}') == ({}, b"")
    assert decode_envelope(b'{"Body":"aGk="}') == ({}, b"hi")
    assert decode_envelope(b'{"Header":{"a":"b"}}') == ({"a": "b"}, b"")


@given(st.dictionaries(st.text(), st.text()), st.binary())
def test_round_trip(headers: dict[str, str], body: bytes) -> None:
    assert decode_envelope(encode_envelope(headers, body)) == (headers, body)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "keys"),
        (b'{"n": 1}', "keys"),
        (b'{"Header": {}, "Body": "aGk=", "Extra": 1}', "keys"),
        (b'{"Header": {"a": 1}, "Body": ""}', "strings"),
        (b'{"Header": [], "Body": ""}', "strings"),
        (b'{"Header": {}, "Body": 5}', "base64"),
        (b'{"Header": {}, "Body": "***"}', "base64"),
    ],
)
def test_anything_else_is_a_value_error(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_envelope(data)


def test_the_body_is_base64_and_headers_keep_unicode() -> None:
    doc = json.loads(encode_envelope({"X-Name": "héllo ✓"}, b"\x00\xff"))
    assert doc == {"Header": {"X-Name": "héllo ✓"}, "Body": base64.b64encode(b"\x00\xff").decode()}
