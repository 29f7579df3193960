"""Graceful stop: no new deliveries, in-flight handlers finish (or are nacked), nothing lost."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap

import microbroker
from microbroker import Context
from microbroker.brokers.memory import MemoryBroker

_bus = itertools.count()


def worker_pair(address: str) -> tuple[microbroker.Service, microbroker.Service]:
    """Two instances of one service, sharing a queue group on one in-process bus."""
    return (
        microbroker.Service("billing", broker=MemoryBroker(address)),
        microbroker.Service("billing", broker=MemoryBroker(address)),
    )


async def test_stop_lets_a_running_handler_finish_and_acks_it() -> None:
    slow, spare = worker_pair(f"stop-{next(_bus)}")
    started, finished = asyncio.Event(), []
    spare_got: list[str] = []

    @slow.subscriber("invoices", queue="workers")
    async def on_slow(msg: dict[str, str], ctx: Context) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(msg["n"])

    @spare.subscriber("invoices", queue="workers")
    async def on_spare(msg: dict[str, str], ctx: Context) -> None:
        spare_got.append(msg["n"])

    await spare.start()
    await slow.start()
    await slow.event("invoices").publish({"n": "1"})  # round-robin: the first member is spare
    await slow.event("invoices").publish({"n": "2"})  # ... and the second is slow
    await asyncio.wait_for(started.wait(), 5)
    assert slow.server.in_flight == 1
    await slow.stop()
    assert finished == ["2"], "stop() must wait for the running handler"
    await asyncio.sleep(0.2)
    await spare.stop()
    assert spare_got == ["1"], "a finished (acked) message must not be delivered again"


async def test_a_handler_past_the_timeout_is_cancelled_and_its_message_redelivered() -> None:
    stuck, spare = worker_pair(f"stop-{next(_bus)}")
    stuck.stop_timeout = 0.2
    started = asyncio.Event()
    cancelled: list[bool] = []
    spare_got: list[str] = []

    @stuck.subscriber("invoices", queue="workers")
    async def on_stuck(msg: dict[str, str]) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    @spare.subscriber("invoices", queue="workers")
    async def on_spare(msg: dict[str, str]) -> None:
        spare_got.append(msg["n"])

    await stuck.start()
    await stuck.event("invoices").publish({"n": "stuck"})  # only member so far: goes to stuck
    await asyncio.wait_for(started.wait(), 5)
    await spare.start()
    await asyncio.wait_for(stuck.stop(), 5)
    assert cancelled == [True]
    for _ in range(100):
        if spare_got:
            break
        await asyncio.sleep(0.02)
    await spare.stop()
    assert spare_got == ["stuck"], "the nacked message must go to the other instance"


async def test_deliveries_arriving_during_stop_are_nacked_not_handled() -> None:
    closing, spare = worker_pair(f"stop-{next(_bus)}")
    started = asyncio.Event()
    release = asyncio.Event()
    handled: list[str] = []
    spare_got: list[str] = []

    @closing.subscriber("jobs", queue="workers")
    async def on_job(msg: dict[str, str]) -> None:
        handled.append(msg["n"])
        started.set()
        await release.wait()

    @spare.subscriber("jobs", queue="workers")
    async def on_spare(msg: dict[str, str]) -> None:
        spare_got.append(msg["n"])

    await closing.start()
    await closing.event("jobs").publish({"n": "first"})
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(closing.stop())
    await asyncio.sleep(0)  # one turn: stop() has begun (it sets started False first)
    assert not closing.server.started, "stop() is draining"
    # A second broker connection publishes while the first instance is draining.
    await spare.start()
    for n in range(4):
        await spare.event("jobs").publish({"n": f"late{n}"})
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(stopping, 5)
    for _ in range(100):
        if len(spare_got) == 4:
            break
        await asyncio.sleep(0.02)
    await spare.stop()
    assert handled == ["first"], "a stopping server must not take new work"
    assert sorted(spare_got) == [f"late{n}" for n in range(4)], "nothing is lost"


SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import microbroker

    async def main():
        service = microbroker.Service("worker", broker=microbroker.get_broker("memory"))
        started = asyncio.Event()

        @service.subscriber("work")
        async def on_work(msg: dict) -> None:
            started.set()
            await asyncio.sleep(0.5)
            print("handled", msg["n"], flush=True)

        async def feed():
            await started.wait()
            print("in flight", flush=True)

        await service.start()
        await service.event("work").publish({"n": 1})
        asyncio.get_running_loop().create_task(feed())
        await service.run()  # already started: run() serves until the signal, then drains
        print("stopped", flush=True)

    asyncio.run(main())
    """
)


def test_sigterm_drains_the_in_flight_handler_before_exiting() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MICRO_BROKER": "memory"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in flight"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["handled 1", "stopped"], out + err


async def test_messages_queued_behind_a_running_handler_go_to_the_group_once() -> None:
    """Stopping ends the subscription first: what it had queued goes to another member,
    not round and round through the stopping server until it is gone."""
    address = f"stop-{next(_bus)}"
    closing_broker, spare_broker = MemoryBroker(address), MemoryBroker(address)
    closing = microbroker.Service("billing", broker=closing_broker)
    spare = microbroker.Service("billing", broker=spare_broker)
    started, release = asyncio.Event(), asyncio.Event()
    seen_by_closing: list[str] = []
    spare_got: list[tuple[str, int]] = []

    @closing.subscriber("jobs", queue="workers")
    async def on_closing(msg: dict[str, str], ctx: Context) -> None:
        seen_by_closing.append(msg["n"])
        started.set()
        await release.wait()

    @spare.subscriber("jobs", queue="workers")
    async def on_spare(msg: dict[str, str], ctx: Context) -> None:
        spare_got.append((msg["n"], ctx.attempt))

    await closing.start()
    await closing.event("jobs").publish({"n": "first"})
    await asyncio.wait_for(started.wait(), 5)
    for n in range(5):  # queued behind the running handler, in the closing member's mailbox
        await closing_broker.publish("jobs", microbroker.Message(f'{{"n": "q{n}"}}'.encode(), {}))
    stopping = asyncio.create_task(closing.stop())
    await spare.start()
    await asyncio.sleep(0.2)  # a stop that bounced the queued messages would spin meanwhile
    release.set()
    await asyncio.wait_for(stopping, 5)
    await closing_broker.disconnect()
    for _ in range(200):
        if len(spare_got) == 5:
            break
        await asyncio.sleep(0.01)
    await spare.stop()
    assert seen_by_closing == ["first"], "the stopping server handled nothing new"
    assert sorted(spare_got) == [(f"q{n}", 1) for n in range(5)], (
        "each queued message reached the other member once, on its first attempt"
    )
