"""The header codec of microbroker-nats against nats-py's own, on generated headers."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.errors import BadHeaderError

from microbroker import Message
from microbroker_nats._client import encode_headers, header_block_size, parse_header_lines
from microbroker_nats._delivery import NatsDelivery

TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
names = st.text(alphabet=TOKEN, min_size=1, max_size=20)
# Any text a str can hold and UTF-8 can encode, but CR and LF (which Broker.publish refuses).
values = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=40
)
headers = st.dictionaries(names, values, max_size=6)


@given(headers)
def test_what_is_encoded_parses_back_in_nats_py_and_here(given_headers: dict[str, str]) -> None:
    block = encode_headers(given_headers)
    assert block.startswith(b"NATS/1.0\r\n")
    assert block.endswith(b"\r\n\r\n")
    assert len(block) == header_block_size(given_headers)
    # A receiver strips the spaces around a value; nothing else changes.
    expected = {name: value.encode().strip().decode() for name, value in given_headers.items()}
    assert Client._parse_header_lines(block[10:]) == expected
    assert parse_header_lines(block[10:]) == expected
    # Encoding the same headers again (now through the fast path) gives the same block.
    assert encode_headers(given_headers) == block


@pytest.mark.parametrize("value", ["a\r\nX-Injected: yes", "a\nb", "a\rb"])
def test_cr_and_lf_are_refused_not_rewritten(value: str) -> None:
    """Broker.publish refuses them (InvalidHeader); the client refuses them for its other users."""
    with pytest.raises(BadHeaderError):
        encode_headers({"X-Split": value})
    encode_headers({"X-Split": "fine"})  # the name is known now: the fast path refuses too
    with pytest.raises(BadHeaderError):
        encode_headers({"X-Split": value})


lines = st.one_of(
    st.tuples(names, st.sampled_from([": ", ":", " : ", ":\t"]), values).map(
        lambda t: (t[0] + t[1] + t[2].replace("\r", "").replace("\n", "")).encode()
    ),
    st.binary(max_size=30).filter(lambda b: b"\r\n" not in b and not b.startswith(b":")),
)


@given(st.lists(lines, max_size=6))
def test_parsing_matches_nats_py_on_any_block(block_lines: list[bytes]) -> None:
    raw = b"".join(line + b"\r\n" for line in block_lines) + b"\r\n"
    ours = parse_header_lines(raw)
    theirs = Client._parse_header_lines(raw)
    theirs.pop("", None)  # nats-py keeps a header with a blank name; no client can read it
    assert ours == theirs
    # A second parse (through the line cache) gives the same answer.
    assert parse_header_lines(raw) == ours


# Header lines as NATS clients write them ("Name: value"), with Content-Type spelt in
# several cases and repeated, so that the delivery's shortcut meets every arrangement.
canonical_lines = st.lists(
    st.tuples(
        st.one_of(names, st.sampled_from(["Content-Type", "content-type", "CONTENT-TYPE"])),
        values,
    ),
    max_size=6,
)


@given(canonical_lines)
def test_a_deliverys_content_type_is_the_parsed_blocks(lines: list[tuple[str, str]]) -> None:
    """The delivery finds Content-Type without parsing the block: the same answer as parsing it."""
    raw = b"NATS/1.0\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in lines) + b"\r\n"
    delivery = NatsDelivery("t", b"", raw, None, "", None)  # type: ignore[arg-type]
    parsed = Message(b"", parse_header_lines(raw[10:]))
    assert delivery.content_type == parsed.header("Content-Type")


@given(headers)
def test_a_hook_added_value_that_is_not_text_is_refused_in_any_position(
    given_headers: dict[str, str],
) -> None:
    """Blocks of each size take one formatted string; a non-str value anywhere still fails."""
    encode_headers(given_headers)  # the names are known now: the formatted path is taken
    for name in given_headers:
        bad: dict[str, object] = dict(given_headers)
        bad[name] = 7
        with pytest.raises(BadHeaderError):
            encode_headers(bad)  # type: ignore[arg-type]
