"""At least once across a subscriber crash: a subscriber process killed (SIGKILL) mid-stream.

The case of issue 19: a subscriber with a slow handler (1 ms) and a stable
``client_id`` is killed with SIGKILL while it works through 10,000 QoS 1
messages, and started again with the same id. Its persistent session on
Mosquitto must give it everything it had not finished: the broker
acknowledges a message (PUBACK) only once its handler has settled it, so what
was received and not yet handled when the process died is still the server's
to resend. Duplicates (handled, killed before the PUBACK went out) are allowed
at QoS 1; they are counted and printed.

The subscriber is a real process (``crash_subscriber.py``) that appends each
message it has handled to a file; Mosquitto is the fixtures' own, with the
tests' settings, and is not touched.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.eventually import eventually
from support.mqtt_server import MosquittoServer

import microbroker
from microbroker_mqtt import MqttBroker

pytestmark = pytest.mark.slow

TOTAL = 10_000
SCRIPT = Path(__file__).with_name("crash_subscriber.py")


class _Subscriber:
    """The subscriber process, started and killed as often as the test says."""

    def __init__(self, url: str, protocol: str, topic: str, queue: str, record: Path) -> None:
        self.argv = [
            sys.executable,
            str(SCRIPT),
            url,
            f"crash-{uuid.uuid4().hex[:8]}",  # one stable id for every start
            protocol,
            topic,
            queue,
            str(record),
        ]
        self.record = record
        self.log = record.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process and wait (bounded) until its subscription is made."""
        ready = self.record.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.argv, str(ready)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the subscriber did not start:\n{self.output()}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL: nothing is flushed, no DISCONNECT is sent
            self.proc.wait()
            self.proc = None

    def handled(self) -> list[int]:
        text = self.record.read_text() if self.record.exists() else ""
        return [int(line) for line in text.splitlines() if line]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture
def subscriber(tmp_path: Path) -> Iterator[Callable[..., _Subscriber]]:
    made: list[_Subscriber] = []

    def make(url: str, protocol: str, topic: str, queue: str = "") -> _Subscriber:
        sub = _Subscriber(url, protocol, topic, queue, tmp_path / f"handled-{len(made)}.txt")
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.kill()


@pytest.mark.parametrize(
    ("protocol", "queue"),
    [("5", ""), ("3.1.1", ""), ("5", "workers")],
    ids=["mqtt5", "mqtt311", "mqtt5-shared"],
)
async def test_a_subscriber_killed_mid_stream_loses_nothing(
    new_mosquitto: Callable[..., MosquittoServer],
    subscriber: Callable[..., _Subscriber],
    protocol: str,
    queue: str,
) -> None:
    server = new_mosquitto()
    topic = f"crash/{uuid.uuid4().hex[:8]}"
    sub = subscriber(server.url, protocol, topic, queue)
    await asyncio.to_thread(sub.start)
    async with MqttBroker(server.url, protocol=protocol, qos=1) as pub:
        publishing = asyncio.create_task(_publish(pub, topic))
        await eventually(lambda: len(sub.handled()) >= 2_000, "2,000 handled before the kill", 60)
        await asyncio.to_thread(sub.kill)
        handled_at_kill = len(sub.handled())
        published_at_kill = publishing.done()
        await asyncio.wait_for(publishing, 60)
        await asyncio.to_thread(sub.start)  # the same client id: it resumes its session
        everything = set(range(TOTAL))

        def state() -> str:
            handled = sub.handled()
            missing = sorted(everything - set(handled))
            return (
                f"{len(handled)} handled ({len(set(handled))} distinct), {handled_at_kill} at "
                f"the kill; {len(missing)} missing, from {missing[:5]} to {missing[-5:]}\n"
                f"subscriber's log:\n{sub.output()}\nmosquitto's log:\n{server.log()}"
            )

        try:
            await eventually(lambda: set(sub.handled()) >= everything, f"all {TOTAL}", 120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {state()}") from None
    counts = Counter(sub.handled())
    duplicates = sum(c - 1 for c in counts.values())
    print(
        f"subscriber SIGKILL (MQTT {protocol}{', shared' if queue else ''}): {TOTAL} published "
        f"({'all' if published_at_kill else 'not all'} before the kill), {handled_at_kill} "
        f"handled at the kill, 0 lost, {duplicates} duplicates"
    )
    assert handled_at_kill < TOTAL, "the kill must come mid-stream"
    assert set(counts) == everything


async def _publish(pub: microbroker.Broker, topic: str) -> None:
    """Every message confirmed by the server (PUBACK), so that each one is the server's."""
    for n in range(TOTAL):
        await pub.publish(topic, microbroker.Message(b"%d" % n), confirm=True)
