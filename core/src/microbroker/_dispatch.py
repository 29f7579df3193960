"""The dispatcher: how every broker runs a handler on a delivery and settles the outcome.

``Broker.subscribe`` makes one per subscription and hands it to the
transport's ``receive`` as the function to call for each delivery, so that
every broker applies the same rules:

- an exception from the handler is reported to the ``on_error`` hooks and is a
  failed attempt: nacked with the retry policy's backoff, or given up
  (dead-lettered, rejected) when the attempts are used up;
- with ``auto_ack`` a handler that returns without settling acks the delivery;
- a handler that settled the delivery itself keeps its decision.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

from ._delivery import Delivery, Settlement, _Contract
from ._errors import DecodeError
from ._plugins import report_error

Handler = Callable[[Delivery], Awaitable[None]]


def dispatcher(handler: Handler, auto_ack: bool, contract: _Contract) -> Handler:
    """``handler`` under the settlement rules, made once per subscription.

    A typed subscriber's handler settles its deliveries itself, in the frame
    that decodes and calls (it has a ``_microbroker_dispatcher``): one
    coroutine less per message.
    """
    if contract.in_process:
        return functools.partial(_dispatch_retrying, handler, auto_ack, contract)
    # Looked up on the type: a mock (AsyncMock) handler answers any attribute asked of it.
    settling = getattr(type(handler), "_microbroker_dispatcher", None)
    if settling is not None:
        made: Handler = settling(handler, auto_ack, contract)
        return made
    return functools.partial(_dispatch, handler, auto_ack, contract)


async def _dispatch(
    handler: Handler, auto_ack: bool, contract: _Contract, delivery: Delivery
) -> None:
    delivery._contract = contract
    try:
        await handler(delivery)
    except Exception as exc:
        await settle_failure(exc, delivery)
    else:
        if auto_ack and delivery._state == 0:
            if delivery.acks_locally:
                delivery._state = 1
            else:
                await delivery.ack()


async def _dispatch_retrying(
    handler: Handler, auto_ack: bool, contract: _Contract, delivery: Delivery
) -> None:
    """For a broker that cannot redeliver: the policy's attempts, made here, in turn."""
    delivery._contract = contract
    policy = contract.policy
    while True:
        try:
            await handler(delivery)
        except Exception as exc:
            report_error(exc, delivery)
            if delivery._state != 0:
                return  # the handler settled it itself: its decision stands
            if isinstance(exc, DecodeError) or delivery.attempt >= policy.max_attempts:
                await contract.give_up(delivery, exc)
                return
            await asyncio.sleep(policy.delay(delivery.attempt))
            delivery.attempt += 1
            continue
        if auto_ack and delivery._state == 0:
            await delivery.ack()
        return


def concurrently(deliver: Handler, limit: int) -> Handler:
    """``deliver`` running up to ``limit`` deliveries at once, each in a task of its own.

    The returned function waits for a free slot before it hands a delivery
    over, which holds the transport back: no more than ``limit`` deliveries
    of the subscription are in its handler at once. Order is not kept.
    """
    slots = asyncio.Semaphore(limit)
    tasks: set[asyncio.Task[None]] = set()

    async def run(delivery: Delivery) -> None:
        try:
            await deliver(delivery)
        finally:
            slots.release()

    async def hand_off(delivery: Delivery) -> None:
        await slots.acquire()
        task = asyncio.get_running_loop().create_task(run(delivery))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return hand_off


def logged(deliver: Handler, logger: logging.Logger) -> Handler:
    """``deliver`` with a DEBUG line for each delivery and for how it ended.

    ``Broker.subscribe`` wraps a subscription in it only when DEBUG is on for
    the broker's logger as it subscribes, so that it costs nothing when off.
    """

    async def deliver_logged(delivery: Delivery) -> None:
        logger.debug(
            "delivery on %r%s: attempt %d, %d bytes",
            delivery.topic,
            f" (queue {delivery.queue!r})" if delivery.queue else "",
            delivery.attempt,
            len(delivery.message.body),
        )
        try:
            await deliver(delivery)
        finally:
            logger.debug(
                "delivery on %r, attempt %d: %s",
                delivery.topic,
                delivery.attempt,
                Settlement(delivery._state).name.lower(),
            )

    return deliver_logged


async def settle_failure(error: Exception, delivery: Delivery) -> None:
    """What the dispatcher does when a handler raises: report, then retry or give up."""
    report_error(error, delivery)
    if delivery._state != 0:
        return  # the handler settled it itself: its decision stands
    contract = delivery._contract
    if contract is None:
        await delivery.nack()
        return
    await contract.failed(delivery, error)


__all__ = ["Handler", "concurrently", "dispatcher", "logged", "settle_failure"]
