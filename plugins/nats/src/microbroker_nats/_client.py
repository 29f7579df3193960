"""nats-py's client with a faster message path: the same wire format and the same checks.

Every typed Event carries three headers (``Content-Type``, ``Micro-Topic``,
``Micro-ID``), and nats-py encodes and parses headers with per-character Python
work that costs more than the rest of a publish->deliver together. This client
overrides the routines that do it (private to nats-py, so the override is
checked against the installed version and dropped when they are missing):
header names are validated once and their encoding cached, and names are
decoded once. Messages of microbroker's subscriptions go from the reader
straight into each subscription's :class:`~microbroker.transport.Mailbox`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client, _validate_subject
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.errors import (
    BadHeaderError,
    BadSubjectError,
    MaxPayloadError,
    ProtocolError,
    SecureConnWantedError,
)
from nats.protocol.parser import AWAITING_CONTROL_LINE as _AWAITING_CONTROL_LINE
from nats.protocol.parser import AWAITING_MSG_PAYLOAD as _AWAITING_MSG_PAYLOAD
from nats.protocol.parser import MAX_CONTROL_LINE_SIZE as _MAX_CONTROL_LINE
from nats.protocol.parser import Parser

logger = logging.getLogger("microbroker.broker.nats")

_CRLF = b"\r\n"
_HEADER_LINE = b"NATS/1.0\r\n"
# The token characters of RFC 7230, as nats-py itself accepts for a header name.
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: The framing of a NATS header block: ``NATS/1.0`` CRLF and the final CRLF, then
#: ``": "`` and CRLF for each header.
BLOCK_FRAMING = len(_HEADER_LINE) + len(_CRLF)
HEADER_FRAMING = len(b": ") + len(_CRLF)
_CACHE_LIMIT = 4096

# Header names seen before that are valid as they are (no surrounding spaces).
_valid_names: set[str] = set()
# Header name (raw bytes from the wire) -> str, or "" for a name nats-py drops.
_decoded_names: dict[bytes, str] = {}
# Subject (raw bytes from the wire) -> str.
_subjects: dict[bytes, str] = {}
# Whole header lines that repeat (Content-Type, Micro-Topic), when parsed.
_parsed_lines: dict[bytes, tuple[str, str]] = {}
# MSG/HMSG control lines without a reply subject -> their parsed fields.
_control_lines: dict[bytes, tuple[int, bytes, bytes, int, int]] = {}
_CACHED_VALUE = 200
# Headers unique to each message: caching them would only churn the cache.
_UNIQUE_NAMES = frozenset(
    {"Micro-ID", "Micro-Id", "Nats-Msg-Id", "micro-id", "MICRO-ID", "Micro-Deadline"}
)


def encode_headers(headers: dict[str, str]) -> bytes:
    """The NATS header block for ``headers``, as nats-py writes it.

    Names seen before and values without CR or LF (the common case) go
    through one formatted string (:func:`_block_encoder`); anything else takes
    nats-py's rules (names stripped and checked, blank names skipped). A value
    holding CR or LF is refused (``BadHeaderError``), never rewritten: it would
    split the block. ``Broker.publish`` refuses such headers before they get
    here (:class:`~microbroker.InvalidHeader`); this guards the client's other
    users and the headers a publish hook adds after that check. Unlike
    nats-py, a value is sent as it is rather than stripped: receivers strip the
    ASCII spaces around it when they parse the block.
    """
    count = len(headers)
    encode = _block_encoders.get(count)
    if encode is None:
        if not 0 < count <= _MOST_FORMATTED:
            return _encode_headers_slowly(headers)
        encode = _block_encoders[count] = _block_encoder(count)
    block = encode(headers)
    return _encode_headers_slowly(headers) if block is None else block


# The number of headers -> the encoder of a block of that many (see _block_encoder).
_block_encoders: dict[int, Callable[[dict[str, str]], bytes | None]] = {}
_MOST_FORMATTED = 12


def _block_encoder(count: int) -> Callable[[dict[str, str]], bytes | None]:
    """An encoder of the header blocks of ``count`` (at least 1) headers, made once for that count.

    It unpacks the headers into locals and writes the block with one
    f-string, so that a block costs one formatting and one ``encode()`` (a
    loop formatting a line per header, then joining, costs half as much again:
    9.3k instructions for the three headers of a typed Event, against 6.5k).
    It returns ``None`` (the caller then takes the slow path, which checks
    and raises) unless every name was seen valid before and every value is a
    ``str`` without CR or LF; the values are checked together, as one string.
    For two headers the code is::

        def encode(headers):
            (n0, v0), (n1, v1), = headers.items()
            if n0 in valid and n1 in valid:
                try:
                    text = v0 + v1
                except TypeError:
                    return None
                if type(text) is str and '\\r' not in text and '\\n' not in text:
                    return f'NATS/1.0\\r\\n{n0}: {v0}\\r\\n{n1}: {v1}\\r\\n\\r\\n'.encode()
            return None
    """
    names = [f"n{i}" for i in range(count)]
    values = [f"v{i}" for i in range(count)]
    lines = "".join(f"{{{n}}}: {{{v}}}\\r\\n" for n, v in zip(names, values, strict=True))
    code = "\n".join(
        [
            "def encode(headers):",
            f"    {''.join(f'({n}, {v}), ' for n, v in zip(names, values, strict=True))}"
            "= headers.items()",
            f"    if {' and '.join(f'{n} in valid' for n in names)}:",
            "        try:",
            f"            text = {' + '.join(values)}",
            "        except TypeError:",
            "            return None",
            "        if type(text) is str and '\\r' not in text and '\\n' not in text:",
            f"            return f'NATS/1.0\\r\\n{lines}\\r\\n'.encode()",
            "    return None",
        ]
    )
    namespace: dict[str, Any] = {"valid": _valid_names}
    exec(compile(code, f"<nats header block of {count}>", "exec"), namespace)
    encode: Callable[[dict[str, str]], bytes | None] = namespace["encode"]
    return encode


def _encode_headers_slowly(headers: dict[str, str]) -> bytes:
    parts = [_HEADER_LINE]
    for name, value in headers.items():
        key = name.strip()
        if not key:
            continue  # nats-py skips a blank name
        if not _HEADER_KEY.fullmatch(key):
            raise BadHeaderError(key)
        if not isinstance(value, str):
            raise BadHeaderError(f"the value of header {key!r} is not a str: {value!r}")
        if "\r" in value or "\n" in value:
            raise BadHeaderError(f"the value of header {key!r} holds CR or LF: {value!r}")
        if key == name and len(_valid_names) < _CACHE_LIMIT:
            _valid_names.add(name)
        parts.append(key.encode() + b": " + value.encode() + _CRLF)
    parts.append(_CRLF)
    return b"".join(parts)


def header_block_size(headers: dict[str, str]) -> int:
    """The bytes of the NATS header block :func:`encode_headers` writes for ``headers``.

    ``NATS/1.0`` and the blank line that ends the block (12 bytes), then
    ``Name: Value`` and CRLF per header (4 bytes of framing each).
    """
    return BLOCK_FRAMING + sum(
        len(name) + len(value.encode()) + HEADER_FRAMING for name, value in headers.items()
    )


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """Parse ``Name: Value`` lines as nats-py does (names ASCII tokens, values UTF-8)."""
    out: dict[str, str] = {}
    known = _parsed_lines
    names = _decoded_names
    for line in raw.split(_CRLF):
        pair = known.get(line)
        if pair is not None:
            out[pair[0]] = pair[1]
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = names.get(name)
        if key is None:
            key = _decode_name(name)
            if len(names) < _CACHE_LIMIT:
                names[name] = key
        if key:
            text = out[key] = value.strip().decode("utf-8", "replace")
            if len(line) <= _CACHED_VALUE and key not in _UNIQUE_NAMES:
                if len(known) >= _CACHE_LIMIT:
                    known.clear()
                known[line] = (key, text)
    return out


def _decode_name(name: bytes) -> str:
    try:
        key = name.strip().decode("ascii")
    except UnicodeDecodeError:
        return ""
    # A name with whitespace inside is invalid; nats-py drops it.
    if len(key.split()) != 1:
        return ""
    return key


def _parse_control_line(line: bytes) -> tuple[int, bytes, bytes, int, int]:
    """``(sid, subject, reply, header size, total size)`` of a MSG or HMSG control line.

    Lines without a reply subject repeat from message to message (same
    subscription, same sizes) and are remembered; a request's reply inbox is
    new each time, so those are not.
    """
    args = line.split()
    count = len(args)
    op = args[0]
    try:
        if op == b"MSG" and count == 4:
            subject, sid, reply, hsize, size = args[1], args[2], b"", 0, int(args[3])
        elif op == b"MSG" and count == 5:
            subject, sid, reply, hsize, size = args[1], args[2], args[3], 0, int(args[4])
        elif op == b"HMSG" and count == 5:
            subject, sid, reply = args[1], args[2], b""
            hsize, size = int(args[3]), int(args[4])
        elif op == b"HMSG" and count == 6:
            subject, sid, reply = args[1], args[2], args[3]
            hsize, size = int(args[4]), int(args[5])
        else:
            raise ValueError(op)
        if hsize > size or hsize < 0:
            raise ValueError(hsize)
        parsed = (int(sid), subject, reply, hsize, size)
    except ValueError:
        raise ProtocolError("nats: malformed MSG") from None
    if not reply:
        if len(_control_lines) >= _CACHE_LIMIT:
            _control_lines.clear()  # sizes vary more than a cache can follow: start again
        _control_lines[line] = parsed
    return parsed


class FastParser(Parser):
    """nats-py's protocol parser with a fast path for MSG and HMSG, the per-message operations.

    A message is cut out of the buffer with one search for its control line's
    end and one split, instead of trying regular expressions in turn. Every
    other operation (PING, PONG, INFO, +OK, -ERR) goes to nats-py's parser.
    """

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        nc = self.nc
        while buf:
            if self.state == _AWAITING_MSG_PAYLOAD:
                needed = self.needed
                if len(buf) < needed + 2:
                    return
                hsize = self.header_needed
                arg = self.msg_arg
                if hsize:
                    hdr: bytes | None = bytes(buf[:hsize])
                    payload = bytes(buf[hsize:needed])
                else:
                    hdr = None
                    payload = bytes(buf[:needed])
                del buf[: needed + 2]
                self.header_needed = 0
                self.state = _AWAITING_CONTROL_LINE
                await nc._process_msg(arg["sid"], arg["subject"], arg["reply"], payload, hdr)
                if self.buf is not buf:  # reset by a reconnection meanwhile
                    return
                continue
            first = buf[0]
            if first != 77 and first != 72:  # neither "MSG" nor "HMSG"
                await super().parse()
                return
            # Cut the messages out of one immutable copy of the buffer: bytes slices
            # copy once (a bytearray's twice), and the buffer is cut once per read.
            chunk = bytes(buf)
            total = len(chunk)
            pos = 0
            while True:
                end = chunk.find(_CRLF, pos)
                if end < 0:
                    if total - pos > _MAX_CONTROL_LINE:
                        raise ProtocolError("nats: control line too long")
                    del buf[:pos]
                    return
                line = chunk[pos:end]
                known = _control_lines.get(line)
                if known is None:
                    known = _parse_control_line(line)
                number, subject, reply, hsize, size = known
                start = end + 2
                stop = start + size
                if total < stop + 2:
                    # The payload is still on its way: wait for it in nats-py's own state.
                    del buf[:start]
                    self.msg_arg["subject"] = subject
                    self.msg_arg["sid"] = number
                    self.msg_arg["reply"] = reply
                    self.needed = size
                    self.header_needed = hsize
                    self.state = _AWAITING_MSG_PAYLOAD
                    break
                if hsize:
                    hdr = chunk[start : start + hsize]
                    payload = chunk[start + hsize : stop]
                else:
                    hdr = None
                    payload = chunk[start:stop]
                pos = stop + 2
                # A message for a microbroker subscription goes to its sink without a coroutine.
                if not nc.deliver_to_sink(number, subject, reply, payload, hdr):
                    del buf[:pos]
                    await nc._process_msg(number, subject, reply, payload, hdr)
                    if self.buf is not buf:  # reset by a reconnection meanwhile
                        return
                    break
                if pos == total:
                    buf.clear()
                    return
                first = chunk[pos]
                if first != 77 and first != 72:  # another operation: nats-py's parser takes it
                    del buf[:pos]
                    break


async def round_trip(nc: Client, timeout: float) -> None:
    """Return once the server has processed every command ``nc`` has written so far.

    nats-py's ``flush()`` writes its PING straight to the socket, ahead of the
    commands still waiting for its flusher task (the SUB of a subscription just
    made, for one), so its PONG alone proves nothing about them: another
    connection could publish before the server has the subscription. The first
    flush lets the flusher write them; the second PING follows them, and its
    PONG does prove it.
    """
    seconds = max(1, math.ceil(timeout))  # nats-py takes whole seconds
    await nc.flush(seconds)
    await nc.flush(seconds)


Headers = bytes | dict[str, str] | None
"""A message's headers as the connection has them: the raw NATS header block
(from :class:`FastClient`, parsed only when read), nats-py's parsed dict, or none."""

Item = tuple[str, str, bytes, Headers]
"""A received message as a subscription's mailbox holds it: ``(subject, reply, body, headers)``."""

Offer = Callable[[Item], bool]
"""A subscription's way in: queue the item now, ``False`` when refused (its mailbox is full)."""

Refused = Callable[[Item], None]
"""What a subscription does with an item its mailbox refused (report it, hand it back)."""

ReplySink = Callable[[bytes, bytes, bytes | None], None]
"""Where the replies of requests go: ``(subject, body, header block or None)``, raw."""

WRITE_DONE, WRITE_KICK, WRITE_FORCE, WRITE_FALLBACK = range(4)


class SafeClient(Client):
    """nats-py's client with its connection set-up made safe for TLS.

    - nats-py upgrades to TLS only when the server *requires* it, so a client
      given a TLS context (``tls=``, ``tls_ca_file=``...) or a ``tls://`` address
      would talk in plaintext, credentials included, to a server that does not
      offer TLS. Here that server is refused (``SecureConnWantedError``) before
      anything is sent; one that offers TLS without requiring it
      (``allow_non_tls``) gets the TLS upgrade, as nats.go does.
    - After a failed TLS handshake (an untrusted certificate, a refused client
      certificate) nats-py waits forever for the socket to close (nats.py
      issue #718): ``asyncio`` has already closed it, but tells the TLS protocol
      and not the stream nats-py waits on. Here the dead transport is replaced
      by a fresh one, so the attempt fails and the next one proceeds.
    """

    def _tls_wanted(self) -> bool:
        server = getattr(self, "_current_server", None)
        scheme = server.uri.scheme if server is not None else ""
        return self.options.get("tls") is not None or scheme == "tls"

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if (
            initial_connection
            and self._tls_wanted()
            and not self.options.get("tls_handshake_first")
            and not info.get("tls_required")
        ):
            if not info.get("tls_available"):
                raise SecureConnWantedError()
            # nats-py reads this very dict next to decide on the upgrade.
            info["tls_required"] = True
        await super()._process_info(info, initial_connection)

    async def _process_connect_init(self) -> None:
        try:
            await super()._process_connect_init()
        except BaseException:
            _drop_failed_tls(self)
            raise


def _drop_failed_tls(nc: Client) -> None:
    """Replace a transport whose TLS upgrade failed by a fresh one (see :class:`SafeClient`)."""
    transport = getattr(nc, "_transport", None)
    if type(transport) is not TcpTransport:
        return
    writer: asyncio.StreamWriter | None = getattr(transport, "_io_writer", None)
    bare: asyncio.StreamWriter | None = getattr(transport, "_bare_io_writer", None)
    if writer is None or writer is not bare:
        return  # not connected, or upgraded: closing it works
    raw = writer.transport
    if isinstance(raw.get_protocol(), asyncio.StreamReaderProtocol):
        return  # no TLS attempted: the stream hears of the close
    raw.abort()
    nc._transport = TcpTransport()  # type: ignore[no-untyped-call]


class FastClient(SafeClient):
    """``nats.aio.client.Client`` with a lean path for microbroker's subscriptions and publishes.

    Messages of a subscription made with :meth:`subscribe_sink` skip nats-py's
    per-message ``Msg`` object and ``asyncio.Queue``: the reader hands them
    (subject, reply, body, headers) to the subscription's mailbox.
    :meth:`publish_fast` writes the protocol command directly while connected
    and defers to :meth:`publish` otherwise (reconnect buffering, errors).
    """

    def __init__(self) -> None:
        super().__init__()
        self._ps = FastParser(self)
        self._sinks: dict[int, tuple[Offer, Refused]] = {}
        self._status_sinks: set[int] = set()
        self._reply_sinks: dict[int, ReplySink] = {}
        self._valid_subjects: set[str] = set()

    async def subscribe_sink(
        self, subject: str, queue: str, offer: Offer, refused: Refused, *, statuses: bool = False
    ) -> Subscription:
        """Subscribe ``subject`` (in queue group ``queue``): each message goes to ``offer``.

        The reader calls ``offer`` inline, without a coroutine; a message it
        refuses goes to ``refused``. Status messages (a header block
        ``NATS/1.0 <code>``) are dropped unless ``statuses``: a reply inbox
        needs its ``503`` (no responders).
        """
        # subscribe() takes the next sid before its first await, so no message can
        # arrive for it before the sink is in place.
        sid = self._sid + 1
        sink = (offer, refused)
        self._sinks[sid] = sink
        if statuses:
            self._status_sinks.add(sid)
        try:
            sub = await self.subscribe(subject, queue=queue)
        except BaseException:
            self._sinks.pop(sid, None)
            self._status_sinks.discard(sid)
            raise
        if sub._id != sid:  # pragma: no cover - nats-py changed how it numbers subscriptions
            self._sinks.pop(sid, None)
            self._sinks[sub._id] = sink
            if statuses:
                self._status_sinks.discard(sid)
                self._status_sinks.add(sub._id)
        return sub

    def release_sink(self, sub: Subscription) -> None:
        self._sinks.pop(sub._id, None)
        self._status_sinks.discard(sub._id)
        self._reply_sinks.pop(sub._id, None)

    async def subscribe_replies(self, subject: str, sink: ReplySink) -> Subscription:
        """Subscribe ``subject`` (a wildcard inbox): each message goes to ``sink`` as it came.

        For the replies of requests: the reader calls ``sink(subject, body,
        header block)`` inline with the raw bytes, status messages included (a
        request learns from one that nobody serves its subject).
        """
        sid = self._sid + 1
        self._reply_sinks[sid] = sink
        try:
            sub = await self.subscribe(subject)
        except BaseException:
            self._reply_sinks.pop(sid, None)
            raise
        if sub._id != sid:  # pragma: no cover - nats-py changed how it numbers subscriptions
            self._reply_sinks.pop(sid, None)
            self._reply_sinks[sub._id] = sink
        return sub

    def deliver_to_sink(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        """Hand a message to its subscription's mailbox; ``False`` when it has none."""
        sink = self._sinks.get(sid)
        if sink is None or sid not in self._subs:
            return self._deliver_reply(sid, subject, data, headers)
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        if headers is not None:
            if not headers:
                headers = None
            elif len(headers) > 8 and headers[8] == 32 and sid not in self._status_sinks:
                # "NATS/1.0 100 ...": a status (heartbeat, flow control): none is asked for
                return True
        name = _subjects.get(subject)
        if name is None:
            name = subject.decode()
            if len(_subjects) < _CACHE_LIMIT:
                _subjects[subject] = name
        # The header block is parsed by the delivery, when (and if) it is read.
        item = (name, reply.decode() if reply else "", data, headers)
        if not sink[0](item):
            sink[1](item)
        return True

    def _deliver_reply(self, sid: int, subject: bytes, data: bytes, headers: bytes | None) -> bool:
        sink = self._reply_sinks.get(sid)
        if sink is None or sid not in self._subs:
            return False
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        sink(subject, data, headers or None)
        return True

    async def _process_msg(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: bytes | None,
    ) -> None:
        if not self.deliver_to_sink(sid, subject, reply, data, headers):
            # nats-py passes None for "no headers" although its annotation says bytes.
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]

    def write_publish(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        reply: str = "",
        *,
        once: bool = False,
    ) -> int:
        """Queue a publish without awaiting: the per-message part of :meth:`publish`.

        ``reply`` (a request's inbox) is the caller's to have made valid.
        ``once``: ``subject`` is used once (the reply subject of a request):
        checked, not remembered among the subjects seen before.

        Returns ``WRITE_FALLBACK`` when not connected (the caller then awaits
        :meth:`publish`, which buffers while reconnecting or raises), else
        ``WRITE_DONE``, or ``WRITE_KICK`` / ``WRITE_FORCE`` when the caller must
        await :meth:`kick` so that the flusher writes (or drains) the buffer.
        """
        flush_queue = self._flush_queue
        if self._status != Client.CONNECTED or flush_queue is None:
            return WRITE_FALLBACK
        if subject not in self._valid_subjects:
            _validate_subject(subject)
            if not once and len(self._valid_subjects) < _CACHE_LIMIT:
                self._valid_subjects.add(subject)
        size = len(payload)
        # The command's parts go to the buffer as they are (the flusher writes them with
        # writelines): no copy of the payload into one command.
        if headers:
            hdr = encode_headers(headers)
            hdr_len = len(hdr)
            # The server's limit is on the header block and the payload together.
            if hdr_len + size > self._max_payload:
                raise MaxPayloadError
            line = f"HPUB {subject} {reply} {hdr_len} {hdr_len + size}\r\n".encode()
            self._pending += (line, hdr, payload, _CRLF)
            self._pending_data_size += len(line) + hdr_len + size + 2
        else:
            if size > self._max_payload:
                raise MaxPayloadError
            line = f"PUB {subject} {reply} {size}\r\n".encode()
            self._pending += (line, payload, _CRLF)
            self._pending_data_size += len(line) + size + 2
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size
        if self._max_pending_size > 0 and self._pending_data_size > self._max_pending_size:
            return WRITE_FORCE
        if not flush_queue._queue:  # type: ignore[attr-defined]  # empty(), without the call
            return WRITE_KICK
        return WRITE_DONE

    async def kick(self, force: bool) -> None:
        """Wake the flusher after :meth:`write_publish` (``force``: wait until it wrote)."""
        await self._flush_pending(force_flush=force)

    async def publish_fast(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> None:
        """Publish like :meth:`publish`, with less work per message while connected."""
        state = self.write_publish(subject, payload, headers)
        if state == WRITE_DONE:
            return
        if state == WRITE_FALLBACK:
            await self.publish(subject, payload, headers=headers)
        else:
            await self._flush_pending(force_flush=state == WRITE_FORCE)

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        if headers is None:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        if not subject:
            raise BadSubjectError
        hdr = encode_headers(headers)
        hdr_len = len(hdr)
        # nats-py checks the payload alone; the server's limit is on both together.
        if hdr_len + payload_size > self._max_payload:
            raise MaxPayloadError
        command = (
            f"HPUB {subject} {reply} {hdr_len} {hdr_len + payload_size}\r\n".encode()
            + hdr
            + payload
            + _CRLF
        )
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += payload_size
        await self._send_command(command)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    _parse_header_lines = staticmethod(parse_header_lines)


def _safe_compatible() -> bool:
    """Whether the installed nats-py still has the routines SafeClient overrides."""
    info = getattr(Client, "_process_info", None)
    init = getattr(Client, "_process_connect_init", None)
    code = getattr(info, "__code__", None)
    return (
        init is not None
        and code is not None
        and code.co_varnames[:3] == ("self", "info", "initial_connection")
        and all(
            hasattr(TcpTransport(), name)  # type: ignore[no-untyped-call]
            for name in ("_io_writer", "_bare_io_writer")
        )
    )


def _compatible() -> bool:
    """Whether the installed nats-py still has the routines FastClient overrides."""
    send = getattr(Client, "_send_publish", None)
    parse = getattr(Client, "_parse_header_lines", None)
    process = getattr(Client, "_process_msg", None)
    needed = ("_subs", "_sid", "_pending", "_pending_data_size", "_flush_queue", "_status", "_ps")
    parser = Parser()
    if not all(hasattr(parser, name) for name in ("buf", "state", "needed", "header_needed")):
        return False
    probe = Client()
    if send is None or parse is None or process is None:
        return False
    if not all(hasattr(probe, name) for name in needed):
        return False
    process_code = getattr(process, "__code__", None)
    if process_code is None or process_code.co_varnames[:6] != (
        "self",
        "sid",
        "subject",
        "reply",
        "data",
        "headers",
    ):
        return False
    code = getattr(send, "__code__", None)
    return code is not None and code.co_varnames[:6] == (
        "self",
        "subject",
        "reply",
        "payload",
        "payload_size",
        "headers",
    )


_COMPATIBLE: bool | None = None
_SAFE: bool | None = None


def client_class(fast: bool = True) -> type[Client]:
    """FastClient when asked for and the installed nats-py allows it, else SafeClient.

    Both carry SafeClient's TLS fixes; with a nats-py too different for them,
    nats-py's own client (and a warning).
    """
    global _COMPATIBLE, _SAFE
    if _SAFE is None:
        _SAFE = _safe_compatible()
        if not _SAFE:
            logger.warning(
                "nats: this nats-py version differs from the one microbroker-nats was tuned "
                "for; using its own client, with which a TLS client may connect in plaintext "
                "to a server without TLS, and a failed TLS handshake may leave connect() waiting"
            )
    if not _SAFE:
        return Client
    if not fast:
        return SafeClient
    if _COMPATIBLE is None:
        _COMPATIBLE = _compatible()
        if not _COMPATIBLE:
            logger.warning(
                "nats: this nats-py version differs from the one microbroker-nats was tuned "
                "for; using its standard (slower) message path"
            )
    return FastClient if _COMPATIBLE else SafeClient
