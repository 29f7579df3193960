"""RPC over any broker: the wire protocol shared by the client and the server side.

The protocol (documented for users in ``docs/rpc.md``):

- a request goes to the topic ``micro.rpc.<service>``, subscribed by every
  instance of the service with the service name as queue group, so that the
  instances share the load;
- it names its endpoint in ``Micro-Endpoint`` (and ``Micro-Method``), its
  service in ``Micro-Service``, carries a unique ``Micro-Id`` that the reply
  echoes, and the absolute deadline (Unix time, seconds) in ``Micro-Deadline``;
- the reply goes to the topic named by ``Micro-Reply-To``, one per client
  (``micro.inbox.<id>``), unless the broker has native request/reply
  (:class:`RequestReply`), which is then used for unary calls;
- a failure travels as an empty body with ``Micro-Error``: go-micro's JSON
  error (``{"id", "code", "detail", "status"}``);
- a stream is a sequence of frames tagged ``Micro-Stream: <stream id>`` and
  ``Micro-Frame: open | data | end | credit | cancel`` (see ``_rpc_stream``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._broker import Subscriber
from ._delivery import Delivery
from ._errors import RpcError, RpcTimeout
from ._headers import CONTENT_TYPE, ENDPOINT, ERROR, ID, SERVICE
from ._message import Message

METHOD = "Micro-Method"
STREAM = "Micro-Stream"
REPLY_TO = "Micro-Reply-To"
DEADLINE = "Micro-Deadline"
FRAME = "Micro-Frame"
SEQ = "Micro-Seq"
CREDIT = "Micro-Credit"

#: Headers the RPC layer writes itself; caller metadata cannot override them.
RPC_RESERVED = frozenset(
    name.casefold()
    for name in (
        CONTENT_TYPE,
        ID,
        SERVICE,
        ENDPOINT,
        ERROR,
        METHOD,
        STREAM,
        REPLY_TO,
        DEADLINE,
        FRAME,
        SEQ,
        CREDIT,
        "Micro-Topic",
    )
)

OPEN = "open"
DATA = "data"
END = "end"
GRANT = "credit"
CANCEL = "cancel"

#: The id of errors raised on the calling side, as in go-micro.
CLIENT_ID = "go.micro.client"
#: The id of protocol errors raised by the serving side (unknown endpoint, bad request).
SERVER_ID = "go.micro.server"

#: Seconds a call waits for its reply when the caller names no timeout (go-micro's default).
DEFAULT_TIMEOUT = 5.0
#: Messages a stream's receiver lets the sender have in flight before it must wait.
DEFAULT_WINDOW = 16


def service_topic(service: str) -> str:
    """The topic the instances of ``service`` take requests on."""
    return f"micro.rpc.{service}"


def inbox_topic(owner: str) -> str:
    """The topic of one client's (or server's) replies and stream frames."""
    return f"micro.inbox.{owner}"


Responder = Callable[[Delivery], Awaitable[Message | None]]


@runtime_checkable
class RequestReply(Protocol):
    """What a broker with native request/reply offers; RPC uses it for unary calls.

    Detected on the broker object. NATS has it (``microbroker_nats``). A broker
    implementing it promises:

    - ``request`` sends ``message`` to ``topic`` and returns the reply; it
      raises a :class:`TimeoutError` subclass when no reply comes within
      ``timeout`` seconds and a :class:`LookupError` subclass when the
      transport knows at once that nobody serves the topic;
    - ``serve`` calls ``responder(delivery)`` for every message on ``topic``
      (one member of ``queue`` per message), requests and plain publishes
      alike; the delivery of a request has a true ``reply_to`` and a
      ``respond(message)`` coroutine that sends the reply.
    """

    async def request(self, topic: str, message: Message, *, timeout: float) -> Message:
        """Send a request and wait for its reply."""
        ...

    async def serve(
        self, topic: str, responder: Responder, *, queue: str | None = None
    ) -> Subscriber:
        """Answer requests on ``topic``."""
        ...


@dataclass(frozen=True, slots=True)
class Request:
    """A call to be made: go-micro's ``client.Request``. Made by :meth:`Client.new_request`."""

    service: str
    endpoint: str
    body: Any
    content_type: str

    @property
    def method(self) -> str:
        """go-micro's ``Method``: the same as the endpoint, ``Handler.Method``."""
        return self.endpoint


def deadline_header(timeout: float) -> str:
    """The ``Micro-Deadline`` value for a call that may take ``timeout`` more seconds."""
    return f"{time.time() + timeout:.6f}"


def remaining(message: Message) -> float | None:
    """Seconds left before the message's deadline (negative when past), or ``None``."""
    value = message.header(DEADLINE)
    if value is None:
        return None
    try:
        return float(value) - time.time()
    except ValueError:
        return None


def error_header(error: RpcError) -> str:
    """go-micro's JSON form of ``error``, safe as a header value (no CR or LF)."""
    return json.dumps(
        {"id": error.id, "code": error.code, "detail": error.detail, "status": error.status}
    )


def parse_error(text: str, default_id: str) -> RpcError:
    """Read a ``Micro-Error`` value; like go-micro, text that is not JSON becomes the detail."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return RpcError(default_id, 500, text)
    code = data.get("code")
    code = code if isinstance(code, int) else 500
    error_id = str(data.get("id") or default_id)
    detail = str(data.get("detail") or "")
    status = data.get("status")
    status = str(status) if status is not None else None
    if code == 408:
        return RpcTimeout(error_id, detail, status=status)
    return RpcError(error_id, code, detail, status)


def error_message(error: RpcError, request_id: str | None) -> Message:
    """The reply that carries ``error``: an empty body and ``Micro-Error``."""
    headers = {ERROR: error_header(error)}
    if request_id is not None:
        headers[ID] = request_id
    return Message(b"", headers)
