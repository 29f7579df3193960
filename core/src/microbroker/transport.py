"""The transport toolkit: what every broker is built on, first-party and third-party alike.

A broker plugin subclasses :class:`Broker` and implements ``connected``,
``connect``, ``disconnect``, :meth:`Broker.send` and :meth:`Broker.receive`;
:meth:`Broker.publish` and :meth:`Broker.subscribe` do the rest the same way
for every broker (argument and header checks, the size limit, the plugins'
event hooks, the retry policy). What a transport composes from here:

- :class:`Delivery`, subclassed with the transport hooks ``on_ack``,
  ``on_nack(delay)`` and ``on_reject``, and ``load_message`` for headers
  parsed lazily; its :class:`Settlement` states;
- :class:`Mailbox`, a subscription's bounded queue and worker, with its
  declared :class:`Overflow` rule (and :class:`Flow` to pause a connection);
- :class:`RetryPolicy` and :func:`backoff`, the one backoff formula (for the
  transport's own waits too: reconnects, retried sends);
- the header names and checks (:func:`check_headers`, :func:`checked_length`,
  :func:`header_size`,
  :func:`header_pairs`) and :func:`check_topic`;
- :func:`report_error`, for what a transport cannot hand to a caller;
- :func:`encode_envelope` and :func:`decode_envelope`, go-micro's JSON
  envelope, for a transport that carries headers inside the payload.

This module and the hooks of :mod:`microbroker.hookspecs` are the plugin API,
versioned as :data:`API_VERSION`. A plugin declares the versions it supports
in the module its entry point names, ``MICROBROKER_API = ">=1.0,<2"``; a core
outside that range refuses the plugin before running any of its code, and
:func:`microbroker.plugin_errors` says which side to upgrade.

``docs/writing-a-plugin.md`` walks through a broker built on these, and
``examples/plugin-template`` is one to copy.
"""

from ._api import API_VERSION
from ._broker import Broker, Capabilities, Handler, Subscriber
from ._delivery import Delivery, Settlement, dead_letter_message
from ._envelope import EnvelopeError, decode_envelope, encode_envelope
from ._errors import (
    GivenUp,
    InvalidHeader,
    InvalidTopic,
    MessageTooLarge,
    NotConnected,
    PublishError,
)
from ._headers import (
    ATTEMPTS,
    CONTENT_TYPE,
    ENDPOINT,
    ERROR,
    ERROR_TYPE,
    ID,
    ORIGINAL_ID,
    ORIGINAL_TOPIC,
    SERVICE,
    TOPIC,
    check_headers,
    checked_length,
    header_pairs,
    header_size,
    new_message_id,
    normalize_content_type,
)
from ._mailbox import Flow, Mailbox, Overflow
from ._message import Message
from ._plugins import report_error
from ._retry import DEFAULT_RETRY, RetryPolicy, backoff
from ._rpc import RequestReply, Responder
from ._topics import Wildcards, check_topic

__all__ = [
    "API_VERSION",
    "ATTEMPTS",
    "CONTENT_TYPE",
    "DEFAULT_RETRY",
    "ENDPOINT",
    "ERROR",
    "ERROR_TYPE",
    "ID",
    "ORIGINAL_ID",
    "ORIGINAL_TOPIC",
    "SERVICE",
    "TOPIC",
    "Broker",
    "Capabilities",
    "Delivery",
    "EnvelopeError",
    "Flow",
    "GivenUp",
    "Handler",
    "InvalidHeader",
    "InvalidTopic",
    "Mailbox",
    "Message",
    "MessageTooLarge",
    "NotConnected",
    "Overflow",
    "PublishError",
    "RequestReply",
    "Responder",
    "RetryPolicy",
    "Settlement",
    "Subscriber",
    "Wildcards",
    "backoff",
    "check_headers",
    "check_topic",
    "checked_length",
    "dead_letter_message",
    "decode_envelope",
    "encode_envelope",
    "header_pairs",
    "header_size",
    "new_message_id",
    "normalize_content_type",
    "report_error",
]
