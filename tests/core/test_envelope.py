"""go-micro's JSON envelope, as the transport toolkit writes and reads it."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microbroker.transport import EnvelopeError, decode_envelope, encode_envelope

# What a header can hold once Broker.publish has checked it: printable text.
texts = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), max_size=30)


@given(st.dictionaries(texts, texts, max_size=5), st.binary(max_size=200))
def test_what_is_encoded_decodes_back(headers: dict[str, str], body: bytes) -> None:
    assert decode_envelope(encode_envelope(headers, body)) == (headers, body)


def test_the_members_are_go_micros() -> None:
    data = encode_envelope({"Micro-Topic": "t", "X-Ü": "ö ✓"}, b"\x00\xffhi")
    assert json.loads(data) == {
        "Header": {"Micro-Topic": "t", "X-Ü": "ö ✓"},
        "Body": base64.b64encode(b"\x00\xffhi").decode(),
    }
    assert "ö ✓".encode() in data, "UTF-8 as it is, as Go writes it"


def test_what_go_leaves_out_is_empty() -> None:
    assert decode_envelope(b'{"Header": {"k": "v"}}') == ({"k": "v"}, b"")
    assert decode_envelope(b'{"Header": null, "Body": null}') == ({}, b"")
    assert decode_envelope(b'{"Body": "aGk="}') == ({}, b"hi")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", '"Header" and "Body" only'),
        (b'{"order": 1}', "'order'"),
        (b'{"Header": {}, "Body": "", "Extra": 1}', "'Extra'"),
        (b'{"Header": {"k": 5}}', "strings"),
        (b'{"Header": [], "Body": ""}', "strings"),
        (b'{"Body": 5}', "base64 string"),
        (b'{"Body": "***"}', "base64"),
    ],
)
def test_anything_else_is_not_an_envelope(data: bytes, why: str) -> None:
    with pytest.raises(EnvelopeError, match=why):
        decode_envelope(data)
    assert issubclass(EnvelopeError, ValueError)


def test_the_body_is_base64_and_headers_keep_unicode() -> None:
    doc = json.loads(encode_envelope({"X-Name": "héllo ✓"}, b"\x00\xff"))
    assert doc == {"Header": {"X-Name": "héllo ✓"}, "Body": base64.b64encode(b"\x00\xff").decode()}
