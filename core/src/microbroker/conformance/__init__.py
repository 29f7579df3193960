"""The broker conformance suite: how a plugin author knows their broker is right.

Two ways to run it:

- from your own tests, subclass :class:`BrokerConformance` and provide a
  ``broker_factory`` fixture (and, optionally, ``restart_server``)::

      from microbroker.conformance import BrokerConformance

      class TestMyBroker(BrokerConformance):
          @pytest.fixture
          def broker_factory(self, my_server):
              return lambda: microbroker.get_broker("mine", address=my_server.url)

- against any installed broker from the command line, exit status 0 only when
  it conforms::

      python -m microbroker.conformance --broker NAME [--address ADDR] [--restart-command CMD]

The suite adapts to the capabilities the broker declares (see
:class:`microbroker.Capabilities`) and fails a broker that declares one it does
not deliver. It needs pytest (``pip install microbroker[conformance]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._harness import BrokerFactory, ErrorCatcher, Harness, Inbox, RestartServer
    from ._suite import MIN_HEADER_BYTES, MIN_HEADERS, MIN_MESSAGE_SIZE, BrokerConformance

__all__ = [
    "MIN_HEADERS",
    "MIN_HEADER_BYTES",
    "MIN_MESSAGE_SIZE",
    "BrokerConformance",
    "BrokerFactory",
    "ErrorCatcher",
    "Harness",
    "Inbox",
    "RestartServer",
]

INSTALL_HINT = "the conformance suite needs pytest: pip install 'microbroker[conformance]'"


def __getattr__(name: str) -> Any:
    # Imported on first use: ``python -m microbroker.conformance`` must be able to say
    # what to install when pytest is missing, rather than fail importing this package.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import _harness, _suite
    except ModuleNotFoundError as exc:
        if exc.name == "pytest":
            raise ModuleNotFoundError(INSTALL_HINT, name="pytest") from exc
        raise
    return getattr(_suite if hasattr(_suite, name) else _harness, name)
