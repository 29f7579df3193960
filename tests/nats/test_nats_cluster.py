"""Failover on a real three-node nats-server cluster: the node the clients use dies mid-stream.

The cluster (``support.nats_server.NatsCluster``: routes between three
nats-servers on loopback, JetStream clustered) is started for each test.
Publisher and subscriber are made as users make them, ``microbroker.get_broker()``
with ``MICRO_BROKER_ADDRESS`` naming all three seeds; both end up on the same
node, and that node is killed (SIGKILL, its pid only) in the middle of a
stream of 10,000 messages. Neither client is told anything: they must find
another node and go on by themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import nats
import pytest
from nats_helpers import eventually
from support.nats_server import NatsCluster, NatsServer

import microbroker
from microbroker_nats import NatsBroker, durable_name

pytestmark = pytest.mark.slow

TOTAL = 10_000
#: Messages acknowledged (JetStream) or delivered (core) before the kill.
KILL_AFTER = 3_000


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """A three-node cluster of this test's own (it kills one)."""
    with NatsCluster() as cluster:
        yield cluster


def from_environment(
    monkeypatch: pytest.MonkeyPatch, cluster: NatsCluster, **options: object
) -> None:
    """Configure brokers as a user does: MICRO_BROKER, the seeds, MICRO_NATS_<OPTION>."""
    monkeypatch.setenv("MICRO_BROKER", "nats")
    monkeypatch.setenv("MICRO_BROKER_ADDRESS", cluster.seeds)
    for name, value in options.items():
        monkeypatch.setenv(f"MICRO_NATS_{name.upper()}", str(value))


def new_broker() -> NatsBroker:
    broker = microbroker.get_broker()
    assert isinstance(broker, NatsBroker)
    return broker


def node_of(cluster: NatsCluster, broker: NatsBroker) -> NatsServer | None:
    """The node ``broker`` is connected to now (``None`` while it is reconnecting)."""
    nc = broker.client
    url = nc.connected_url
    if url is None or not nc.is_connected:
        return None
    return cluster.node_at(url.port or 0)


async def on_the_same_node(cluster: NatsCluster, first: NatsBroker, second: NatsBroker) -> None:
    """Connect ``second`` until it lands on ``first``'s node (the seeds are tried shuffled)."""
    target = node_of(cluster, first)
    for _ in range(60):
        await second.connect()
        if node_of(cluster, second) is target:
            return
        await second.disconnect()
    raise AssertionError("the two brokers never connected to the same node")


class Stream:
    """Publishes ``0..TOTAL-1`` with up to ``concurrency`` publishes in flight, as a user would.

    A publish that raises is counted and retried (the same message), so that
    a test can tell the plugin's own failover from the caller's.
    """

    def __init__(self, broker: NatsBroker, topic: str, *, concurrency: int, pace: float) -> None:
        self.broker = broker
        self.topic = topic
        self.concurrency = concurrency
        self.pace = pace
        self.started = 0
        self.acked = 0
        self.errors: list[BaseException] = []
        #: When the node was sent SIGKILL, and how many publishes had begun and were
        #: not acknowledged yet at that moment.
        self.killed_at: float | None = None
        self.started_at_kill = 0
        self.in_flight_at_kill = 0
        #: Seconds from the kill to the first publish begun after it that returned.
        self.resumed_after: float | None = None

    async def _one(self, n: int, slots: asyncio.Semaphore) -> None:
        message = microbroker.Message(str(n).encode())
        try:
            for _ in range(100):
                try:
                    await self.broker.publish(self.topic, message)
                    break
                except microbroker.MicrobrokerError as exc:
                    self.errors.append(exc)
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"message {n} could not be published")
            self.acked += 1
            killed_at = self.killed_at
            if killed_at is not None and self.resumed_after is None and n >= self.started_at_kill:
                self.resumed_after = time.monotonic() - killed_at
        finally:
            slots.release()

    async def run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        tasks = []
        for n in range(TOTAL):
            await slots.acquire()
            self.started = n + 1
            tasks.append(asyncio.create_task(self._one(n, slots)))
            if self.pace:
                await asyncio.sleep(self.pace)
        await asyncio.gather(*tasks)

    async def kill(self, cluster: NatsCluster, node: NatsServer) -> None:
        """Kill ``node`` now, noting when and what was in flight (from the killing thread,
        right before the signal: the event loop goes on publishing meanwhile)."""

        def kill() -> None:
            self.started_at_kill = started = self.started
            self.in_flight_at_kill = started - self.acked
            self.killed_at = time.monotonic()
            cluster.kill(node)

        await asyncio.to_thread(kill)


class Inbox:
    """The subscriber's side: every number delivered, counted, and when it resumed."""

    def __init__(self, stream: Stream) -> None:
        self.counts: Counter[int] = Counter()
        self.stream = stream
        self.resumed_after: float | None = None

    async def __call__(self, delivery: microbroker.Delivery) -> None:
        n = int(delivery.message.body)
        self.counts[n] += 1
        stream = self.stream
        if (
            stream.killed_at is not None
            and self.resumed_after is None
            and n >= stream.started_at_kill
        ):
            self.resumed_after = time.monotonic() - stream.killed_at

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.counts.values())


async def leaders(cluster: NatsCluster, stream: str, consumer: str) -> tuple[str, str, str]:
    """(meta leader, stream leader, consumer leader), asked through a raw nats-py client."""
    nc = await nats.connect(cluster.seeds.split(","))
    try:
        js = nc.jetstream()
        s = await js.stream_info(stream)
        c = await js.consumer_info(stream, consumer)
        assert s.cluster is not None
        assert c.cluster is not None
        return cluster.meta_leader() or "?", s.cluster.leader or "?", c.cluster.leader or "?"
    finally:
        await nc.close()


async def stored(cluster: NatsCluster, stream: str) -> int:
    """How many messages ``stream`` holds, asked through a raw nats-py client."""
    nc = await nats.connect(cluster.seeds.split(","))
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def lead_from(cluster: NatsCluster, node: NatsServer, stream: str, consumer: str) -> None:
    """Make ``node`` the leader of the stream and of the consumer (leader step-down, preferred)."""
    nc = await nats.connect(cluster.seeds.split(","))
    try:
        placement = json.dumps({"placement": {"preferred": node.server_name}}).encode()
        for subject, current in (
            (f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", 1),
            (f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}", 2),
        ):
            for _ in range(20):
                now = await leaders(cluster, stream, consumer)
                if now[current] == node.server_name:
                    break
                await nc.request(subject, placement, timeout=5)
                await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"{subject}: {node.server_name} never became the leader")
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "killed",
    ["clients-and-leaders-node", "clients-node", "leaders-node"],
)
async def test_jetstream_loses_nothing_when_a_node_is_killed_mid_stream(
    nats_cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch, killed: str
) -> None:
    """10,000 messages through a stream of 3 replicas and a queue group, a node killed after
    3,000: none is lost, duplicates are counted, both clients go on by themselves.

    The node killed is the one publisher and subscriber are connected to, leading the
    stream and its consumer too (``clients-and-leaders-node``: the clients reconnect
    and wait for both leaders to be elected again) or not (``clients-node``: they
    reconnect); or the one leading the stream and the consumer while the clients are
    on another node (``leaders-node``: acknowledgements lost with it, elections).
    """
    cluster = nats_cluster
    stream_name = f"CLUSTER_{uuid.uuid4().hex[:8]}"
    topic = "orders.cluster"
    from_environment(
        monkeypatch,
        cluster,
        jetstream=1,
        replicas=3,
        stream=stream_name,
        reconnect_time_wait=0.1,
        ack_wait=2.0,
        # An election takes 4 to 9 s (nats-server's raft election timeout): publishes wait it out.
        publish_timeout=15.0,
    )
    sub, pub = new_broker(), new_broker()
    await sub.connect()
    try:
        stream = Stream(pub, topic, concurrency=32, pace=0.0)
        inbox = Inbox(stream)
        await sub.subscribe(topic, inbox, queue="workers")
        await on_the_same_node(cluster, sub, pub)
        clients = node_of(cluster, sub)
        assert clients is not None
        others = [node for node in cluster.nodes if node is not clients]
        leading = clients if killed == "clients-and-leaders-node" else others[0]
        doomed = leading if killed == "leaders-node" else clients
        consumer = durable_name("workers", topic)
        await lead_from(cluster, leading, stream_name, consumer)
        meta, stream_leader, consumer_leader = await leaders(cluster, stream_name, consumer)

        publishing = asyncio.create_task(stream.run())
        await eventually(
            lambda: stream.acked >= KILL_AFTER and len(inbox.counts) >= KILL_AFTER // 2,
            "messages published and delivered before the kill",
            60,
        )
        await stream.kill(cluster, doomed)
        acked = stream.started_at_kill - stream.in_flight_at_kill
        await eventually(
            lambda: (
                node_of(cluster, pub) not in (None, doomed)
                and node_of(cluster, sub) not in (None, doomed)
            ),
            "both clients connected to a live node",
            60,
        )
        assert stream.killed_at is not None
        reconnected_after = time.monotonic() - stream.killed_at
        await asyncio.wait_for(publishing, 120)
        await eventually(
            lambda: len(inbox.counts) >= TOTAL, f"delivery of all {TOTAL} messages", 120
        )
        lost = TOTAL - len(inbox.counts)
        # Each message stored once: a copy sent again after the kill was not stored twice.
        in_stream = await stored(cluster, stream_name)
        print(
            f"\nJetStream cluster, {killed} killed ({doomed.server_name}; clients on "
            f"{clients.server_name}, meta leader {meta}, stream leader {stream_leader}, "
            f"consumer leader {consumer_leader}) after {acked} acked, "
            f"{stream.in_flight_at_kill} publishes in flight: {TOTAL} published, "
            f"{in_stream} in the stream, {lost} lost, {inbox.duplicates} duplicates, "
            f"{len(stream.errors)} publishes raised; clients on a live node after "
            f"{reconnected_after:.2f}s, publishing resumed after {stream.resumed_after:.2f}s, "
            f"delivery after {inbox.resumed_after:.2f}s"
        )
        assert stream.started_at_kill < TOTAL, "the kill must happen mid-stream"
        assert not stream.errors, f"publishes raised: {stream.errors[:3]}"
        assert lost == 0
        assert set(inbox.counts) == set(range(TOTAL))
        assert in_stream == TOTAL, "a message sent again must be stored once"
        assert pub.connected
        assert sub.connected
    finally:
        await pub.disconnect()
        await sub.disconnect()


async def test_core_nats_clients_resume_by_themselves_when_their_node_is_killed(
    nats_cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Core NATS (at most once): the node of publisher and queue subscriber killed after
    3,000 of 10,000 messages. Both reconnect to another node by themselves and the
    stream goes on; what was lost on the way is counted and printed, never duplicated."""
    cluster = nats_cluster
    topic = "orders.cluster.core"
    from_environment(monkeypatch, cluster, reconnect_time_wait=0.1)
    sub, pub = new_broker(), new_broker()
    await sub.connect()
    try:
        # Paced (about a millisecond apart), so that the kill falls mid-stream.
        stream = Stream(pub, topic, concurrency=1, pace=0.001)
        inbox = Inbox(stream)
        await sub.subscribe(topic, inbox, queue="workers")
        await on_the_same_node(cluster, sub, pub)
        doomed = node_of(cluster, sub)
        assert doomed is not None
        publishing = asyncio.create_task(stream.run())
        await eventually(lambda: len(inbox.counts) >= KILL_AFTER, "deliveries before the kill", 60)
        await stream.kill(cluster, doomed)
        started = stream.started_at_kill
        await eventually(
            lambda: (
                node_of(cluster, pub) not in (None, doomed)
                and node_of(cluster, sub) not in (None, doomed)
            ),
            "both clients connected to another node",
            60,
        )
        assert stream.killed_at is not None
        reconnected_after = time.monotonic() - stream.killed_at
        await asyncio.wait_for(publishing, 120)
        assert started < TOTAL, "the kill must happen while messages are being published"
        # Published long after both reconnected: the last message arrives.
        await eventually(lambda: TOTAL - 1 in inbox.counts, "the last message", 60)
        lost = TOTAL - len(inbox.counts)
        after = sum(1 for n in inbox.counts if n >= started)
        print(
            f"\ncore NATS cluster, the clients' node {doomed.server_name} killed after "
            f"{started} published: {TOTAL} published, {len(inbox.counts)} delivered, {lost} "
            f"lost, {inbox.duplicates} duplicates, {len(stream.errors)} publishes raised; "
            f"clients on another node after {reconnected_after:.2f}s, delivery resumed "
            f"after {inbox.resumed_after:.2f}s ({after} of the {TOTAL - started} published "
            "after the kill delivered)"
        )
        assert inbox.duplicates == 0, "core NATS delivers at most once"
        assert not stream.errors, f"publishes raised: {stream.errors[:3]}"
        assert inbox.resumed_after is not None
        assert pub.connected
        assert sub.connected
    finally:
        await pub.disconnect()
        await sub.disconnect()


@pytest.mark.skipif(
    bool(os.environ.get("CI")),
    reason="known defect, not yet understood: when the consumer's creation itself goes "
    "unanswered and is asked again, the subscription sometimes receives nothing for 60 s "
    "(2 of 11 runs on 2026-12-02, both under load); run it without CI=true",
)
async def test_a_subscription_made_while_the_meta_leader_is_elected_waits_for_it(
    nats_cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The JetStream meta leader killed, and at once a queue group's first member subscribes
    through another node: its consumer requests go unanswered until a new meta leader is
    elected, and are asked again (rather than subscribe() failing at the first silence);
    then the subscription receives what is published."""
    cluster = nats_cluster
    topic = "orders.cluster.late"
    from_environment(
        monkeypatch, cluster, jetstream=1, replicas=3, stream=f"LATE_{uuid.uuid4().hex[:8]}"
    )
    pub, late = new_broker(), new_broker()
    await pub.connect()
    try:
        meta = cluster.meta_leader()
        assert meta is not None
        doomed = cluster.node(meta)
        for _ in range(60):  # a node that survives
            await late.connect()
            if node_of(cluster, late) is not doomed:
                break
            await late.disconnect()
        assert node_of(cluster, late) is not doomed
        inbox: list[bytes] = []

        async def handler(delivery: microbroker.Delivery) -> None:
            inbox.append(delivery.message.body)

        caplog.set_level("INFO", logger="microbroker.broker.nats")
        await asyncio.to_thread(cluster.kill, doomed)
        began = time.monotonic()
        await late.subscribe(topic, handler, queue="late-comers")
        took = time.monotonic() - began
        asked_again = [r for r in caplog.records if "asking again" in r.getMessage()]
        print(
            f"\nsubscribe() while the meta leader ({meta}) is elected again: returned after "
            f"{took:.2f}s, {len(asked_again)} request(s) asked again, new meta leader "
            f"{cluster.meta_leader()}"
        )
        assert asked_again, "the subscription's requests must have met the election"
        await pub.publish(topic, microbroker.Message(b"after the election"))
        await eventually(lambda: inbox == [b"after the election"], "the message", 60)
        # The killed node comes back with its store and rejoins: routes to both, one leader.
        await asyncio.to_thread(cluster.restart, doomed)
        await pub.publish(topic, microbroker.Message(b"with three nodes again"))
        await eventually(lambda: len(inbox) == 2, "a message once the node is back", 60)
    finally:
        await late.disconnect()
        await pub.disconnect()
