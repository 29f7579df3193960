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

from ._harness import BrokerFactory, Harness, Inbox, RestartServer
from ._suite import BrokerConformance

__all__ = ["BrokerConformance", "BrokerFactory", "Harness", "Inbox", "RestartServer"]
