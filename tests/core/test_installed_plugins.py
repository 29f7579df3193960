"""Out-of-tree plugins as a third party meets them: real distributions, found through entry points.

The tox ``core`` env installs ``fake_plugins/microbroker-fakeplugin`` (a broker
``fake`` and a codec) and ``fake_plugins/microbroker-brokenplugin`` (fails at
import). Outside tox these tests skip, saying how to install them.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _helpers import Inbox, new_address

import microbroker
from microbroker import codecs

HERE = Path(__file__).parent


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _needs(dist: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not _installed(dist),
        reason=f"{dist} is not installed: run `tox -e core`, or "
        f"`pip install {HERE / 'fake_plugins' / dist}`",
    )


needs_fake = _needs("microbroker-fakeplugin")
needs_broken = _needs("microbroker-brokenplugin")


@needs_fake
def test_fake_broker_is_discovered_through_its_entry_point() -> None:
    from microbroker_fakeplugin.plugin import FakeBroker

    info = microbroker.available_brokers()["fake"]
    assert info.distribution == "microbroker-fakeplugin"
    assert info.version == "1.2.3"
    assert info.target is FakeBroker
    broker = microbroker.get_broker("fake")
    assert isinstance(broker, FakeBroker)
    assert str(broker) == "fake"


@needs_fake
def test_fake_codec_is_discovered_and_used() -> None:
    codec_info = microbroker.available("codec")["application/x-fake"]
    assert codec_info.distribution == "microbroker-fakeplugin"
    codec = codecs.get_codec("Application/X-Fake; v=1")
    assert codec.encode("abc") == b"cba"


@needs_fake
async def test_fake_broker_carries_typed_messages_with_the_fake_codec() -> None:
    received = Inbox()

    async def on_text(text: str, ctx: microbroker.Context) -> None:
        received.add((text, ctx.content_type))

    broker = microbroker.get_broker("fake", address=new_address("fake"))
    service = microbroker.Service("fake-svc", broker=broker)
    service.subscriber("greetings")(on_text)
    async with service:
        await service.event("greetings", content_type="application/x-fake").publish("hello")
        assert await received.wait_for(1) == [("hello", "application/x-fake")]


@needs_fake
def test_micro_broker_selects_the_plugin_in_a_fresh_process() -> None:
    """What a user does: install the plugin, set MICRO_BROKER, run the program."""
    program = textwrap.dedent(
        """
        import asyncio, microbroker

        async def main():
            broker = microbroker.get_broker()
            got = asyncio.get_running_loop().create_future()

            async def handler(delivery):
                got.set_result(delivery.message.body)

            async with broker:
                await broker.subscribe("t", handler)
                await broker.publish("t", microbroker.Message(b"via-entry-point"))
                body = await asyncio.wait_for(got, 15)
            print(type(broker).__name__, str(broker), broker.address, body.decode())

        asyncio.run(main())
        """
    )
    env = dict(os.environ, MICRO_BROKER="fake", MICRO_BROKER_ADDRESS="from-env")
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["FakeBroker", "fake", "from-env", "via-entry-point"]


@needs_broken
def test_broken_plugin_is_reported_by_distribution() -> None:
    errors = [
        e for e in microbroker.plugin_errors() if e.distribution == "microbroker-brokenplugin"
    ]
    assert len(errors) == 1
    assert "microbroker-brokenplugin" in str(errors[0])
    assert "ImportError" in str(errors[0])
    # Only the broken one is at fault.
    assert {e.distribution for e in microbroker.plugin_errors()} & {
        "microbroker",
        "microbroker-fakeplugin",
    } == set()


@needs_broken
def test_selecting_the_broken_plugin_names_its_distribution() -> None:
    with pytest.raises(microbroker.PluginError) as info:
        microbroker.get_broker("broken")
    assert info.value.distribution == "microbroker-brokenplugin"
    assert "could not be loaded" in str(info.value)
    assert "ImportError" in str(info.value)


@needs_broken
async def test_every_other_broker_still_works_beside_the_broken_one() -> None:
    assert "broken" not in microbroker.available_brokers()
    for name in microbroker.available_brokers():
        if name not in ("memory", "fake"):
            continue  # other installed brokers need servers; their own suites cover them
        received = Inbox()
        async with microbroker.get_broker(name, address=new_address(name)) as broker:
            await broker.subscribe("alive", received)
            await broker.publish("alive", microbroker.Message(name.encode()))
            assert (await received.wait_for(1))[0].message.body == name.encode()


@needs_broken
def test_broken_plugin_in_a_fresh_process_with_micro_broker_set() -> None:
    """MICRO_BROKER naming the broken plugin fails loudly, naming the distribution."""
    env = dict(os.environ, MICRO_BROKER="broken")
    done = subprocess.run(
        [sys.executable, "-c", "import microbroker; microbroker.get_broker()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "microbroker.PluginError" in done.stderr or "PluginError" in done.stderr
    assert "microbroker-brokenplugin" in done.stderr
