"""The registry on the wire, in a namespace, against go-micro's messages as its source makes them.

go-micro's mDNS client (``internal/util/mdns/client.go``) queries from an
ephemeral port with one PTR question of class IN, and takes a node from one
response message that echoes the question; its server (``server.go``,
``zone.go``) answers with PTR, SRV (priority 10, weight 1), A and TXT in the
answer section, TTL 120, and says goodbye with TTL 0. These tests send and
read such messages with a DNS codec of their own (``mdns_helpers``), not zeroconf's.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
from mdns_helpers import (
    TYPE_A,
    TYPE_PTR,
    TYPE_SRV,
    TYPE_TXT,
    build_message,
    gomicro_client_socket,
    gomicro_node_answers,
    parse_message,
    receive_all,
    wait_nodes,
)
from support.netns import Host, Lan, inside

from microbroker.registries import Node, Service
from microbroker_mdns import FALLBACK_ID_KEY, MdnsRegistry, txt

SERVICE = "micro.http.broker"
GROUP = ("224.0.0.251", 5353)


def _node(node_id: str, address: str, topic: str = "orders") -> Node:
    return Node(node_id, address, {"broker": "http", "topic": topic, "secure": "false"})


async def _query(
    sock: socket.socket, name: str, kind: int = TYPE_PTR, seconds: float = 0.5
) -> list[bytes]:
    ident = 0x1234
    sock.sendto(build_message(ident, 0, [(name, kind, 1)], []), GROUP)
    got = await asyncio.to_thread(receive_all, sock, seconds)
    return [data for data, _ in got]


async def test_answers_a_go_micro_query_as_go_micro_does(in_host1: Host) -> None:
    registry = MdnsRegistry()
    service = Service(SERVICE, "billing", {}, [_node("orders-abc", f"{in_host1.address}:8080")])
    try:
        await registry.register(service)
        with gomicro_client_socket(in_host1.address) as sock:
            replies = await _query(sock, f"{SERVICE}.micro.")
        assert len(replies) == 1, "one message per node, as go-micro's one server per node"
        message = parse_message(replies[0])
        assert message.id == 0x1234  # a unicast reply keeps the query's id
        assert message.flags == 0x8400  # QR and AA
        assert message.questions == [(f"{SERVICE}.micro.", TYPE_PTR, 1)]
        assert not message.authorities
        assert not message.additionals
        instance = f"orders-abc.{SERVICE}.micro."
        host = socket.gethostname() + "."
        kinds = [(rr.type, rr.name, rr.klass, rr.ttl) for rr in message.answers]
        assert kinds == [
            (TYPE_PTR, f"{SERVICE}.micro.", 1, 120),
            (TYPE_SRV, instance, 1, 120),
            (TYPE_A, host, 1, 120),
            (TYPE_TXT, instance, 1, 120),
        ]
        ptr, srv, a, text = (rr.data for rr in message.answers)
        assert ptr == instance
        assert srv == (10, 1, 8080, host)
        assert a == in_host1.address
        assert txt.decode(text) == txt.TxtRecord(
            SERVICE, "billing", {"broker": "http", "topic": "orders", "secure": "false"}
        )
        assert text == txt.encode(txt.decode(text))
    finally:
        await registry.close()


async def test_lists_services_and_answers_instance_questions(in_host1: Host) -> None:
    registry = MdnsRegistry()
    node = _node("orders-abc", f"{in_host1.address}:8080")
    try:
        await registry.register(Service(SERVICE, "ff.http.broadcast", {}, [node]))
        with gomicro_client_socket(in_host1.address) as sock:
            listed = [parse_message(r) for r in await _query(sock, "_services.micro.")]
            srv_only = [
                parse_message(r)
                for r in await _query(sock, f"orders-abc.{SERVICE}.micro.", TYPE_SRV)
            ]
        assert len(listed) == 1
        ptr, srv, a, text = listed[0].answers
        assert (ptr.name, ptr.data) == ("_services.micro.", f"{SERVICE}._services.micro.")
        assert srv.data[2] == 9999
        assert a.data == "0.0.0.0"
        assert text.data == []  # go-micro's wildcard entry has no TXT strings
        assert [rr.type for rr in srv_only[0].answers] == [TYPE_SRV, TYPE_A]
    finally:
        await registry.close()


async def test_reads_a_go_micro_server_answer(in_host1: Host) -> None:
    """A responder that answers as go-micro's does; its TXT strings are Go's own (golden)."""
    import json

    from mdns_helpers import GOLDEN

    golden = json.loads(GOLDEN.read_text())["records"][0]
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("", 5353))
    listener.setsockopt(
        socket.IPPROTO_IP,
        socket.IP_ADD_MEMBERSHIP,
        socket.inet_aton(GROUP[0]) + socket.inet_aton(in_host1.address),
    )
    listener.settimeout(0.05)
    instance = f"orders-4f1c.{SERVICE}.micro."
    answers = gomicro_node_answers(
        instance, f"{SERVICE}.micro.", "gohost.", "10.213.0.77", 9090, golden["go_strings"], 120
    )
    stop = False

    def go_micro_server() -> None:
        while not stop:
            try:
                data, source = listener.recvfrom(65536)
            except TimeoutError:
                continue
            query = parse_message(data)
            if query.flags & 0x8000 or not query.questions:
                continue
            if query.questions[0][0] == f"{SERVICE}.micro.":
                # server.go answers to the sender's address, echoing the question.
                listener.sendto(build_message(query.id, 0x8400, query.questions, answers), source)

    thread = asyncio.get_running_loop().run_in_executor(None, go_micro_server)
    registry = MdnsRegistry()
    try:
        services = await registry.get_service(SERVICE)
        assert [(s.name, s.version) for s in services] == [(SERVICE, "ff.http.broadcast")]
        assert services[0].nodes == [Node("orders-4f1c", "10.213.0.77:9090", golden["metadata"])]
        assert [s.name for s in await registry.list_services()] == [SERVICE]
    finally:
        stop = True
        await thread
        listener.close()
        await registry.close()


async def test_go_micro_announcement_and_goodbye_reach_watch(in_host1: Host) -> None:
    """server.go's announcement (SRV, A, TXT; no question) and unregister (the same, TTL 0)."""
    strings = txt.encode(txt.TxtRecord(SERVICE, "ff.http.broadcast", {"topic": "t"}))
    instance = f"t-9.{SERVICE}.micro."
    announce = gomicro_node_answers(
        instance, f"{SERVICE}.micro.", "gohost.", "10.213.0.78", 9191, strings, 120
    )[1:]
    goodbye = gomicro_node_answers(
        instance, f"{SERVICE}.micro.", "gohost.", "10.213.0.78", 9191, strings, 0
    )[1:]
    registry = MdnsRegistry()
    events = registry.watch(SERVICE)
    try:
        await registry.open()
        with gomicro_client_socket(in_host1.address) as sock:
            sock.sendto(build_message(0, 0x8400, [], announce), GROUP)
            created = await asyncio.wait_for(anext(events), 10)
            assert created.action == "create"
            assert created.service.nodes == [Node("t-9", "10.213.0.78:9191", {"topic": "t"})]
            sock.sendto(build_message(0, 0x8400, [], goodbye), GROUP)
            deleted = await asyncio.wait_for(anext(events), 10)
        assert deleted.action == "delete"
        assert deleted.service.nodes[0].id == "t-9"
        assert await registry.get_service(SERVICE) == []
    finally:
        await events.aclose()
        await registry.close()


async def test_loopback_nodes_stay_on_their_host(lan2: Lan, in_host1: Host) -> None:
    """A node on 127.0.0.1 is answered to this host only, and another host's is ignored."""
    h2 = lan2.hosts[1]
    with inside(h2):
        remote = gomicro_client_socket(h2.address)
    registry = MdnsRegistry()
    try:
        with remote, gomicro_client_socket(in_host1.address) as local:
            await registry.register(Service(SERVICE, "q", {}, [_node("lo-1", "127.0.0.1:8080")]))
            assert len(await _query(local, f"{SERVICE}.micro.")) == 1
            assert await _query(remote, f"{SERVICE}.micro.") == []
            # Another host claims a loopback node: following it would lead to this host.
            strings = txt.encode(txt.TxtRecord(SERVICE, "q", {"topic": "x"}))
            claim = gomicro_node_answers(
                f"x-1.{SERVICE}.micro.", f"{SERVICE}.micro.", "h2.", "127.0.0.1", 80, strings, 120
            )
            remote.sendto(build_message(0, 0x8400, [], claim), GROUP)
            local.sendto(build_message(0, 0x8400, [], claim), GROUP)  # the same, from this host
            await wait_nodes(
                registry, lambda nodes: any(n.id == "x-1" for n in nodes), "the local claim"
            )
        nodes = {n.id for s in await registry.get_service(SERVICE) for n in s.nodes}
        assert nodes == {"lo-1", "x-1"}
    finally:
        await registry.close()


async def test_two_registries_long_ids_and_renewal(in_host1: Host) -> None:
    """A node id with a label over 63 bytes travels by the fallback; an unrenewed node expires."""
    long_id = "inventory-reservation-expired-events-of-the-warehouse-" + "x" * 20 + "-1"
    publisher = MdnsRegistry()
    subscriber = MdnsRegistry()
    try:
        await subscriber.register(
            Service(SERVICE, "q", {}, [_node(long_id, f"{in_host1.address}:81")])
        )
        await subscriber.register(
            Service(SERVICE, "q", {}, [_node("short-1", f"{in_host1.address}:82")]), ttl=1
        )
        found = await publisher.get_service(SERVICE)
        nodes = {n.id: n for s in found for n in s.nodes}
        assert set(nodes) == {long_id, "short-1"}
        assert FALLBACK_ID_KEY not in nodes[long_id].metadata
        # "short-1" was registered for one second and not renewed: it is withdrawn.
        await wait_nodes(
            publisher, lambda nodes: {n.id for n in nodes} == {long_id}, "the unrenewed withdrawn"
        )
    finally:
        await subscriber.close()
        await publisher.close()
    assert publisher.interfaces == []


async def test_a_node_that_stops_answering_drops_out(
    lan2: Lan, in_host1: Host, start_host: object
) -> None:
    """A process on host 2 killed with SIGKILL (no goodbye) leaves lookups and watch."""
    from mdns_helpers import HostProcess

    assert callable(start_host)
    peer: HostProcess = start_host(lan2.hosts[1])
    peer.wait_for(lambda e: e["event"] == "ready", "ready")
    registry = MdnsRegistry(refresh_interval=0.2)
    events = registry.watch(SERVICE)
    try:
        seen: dict[str, str] = {}
        while len(seen) < 2:
            event = await asyncio.wait_for(anext(events), 20)
            assert event.action == "create"
            seen[event.service.nodes[0].metadata["topic"]] = event.service.version
        assert seen == {"jobs": "workers", "news": "ff.http.broadcast"}
        killed = time.monotonic()
        peer.kill()
        deleted = [await asyncio.wait_for(anext(events), 20) for _ in range(2)]
        gone_after = time.monotonic() - killed
        assert {e.action for e in deleted} == {"delete"}
        assert await registry.get_service(SERVICE) == []
        print(f"\nkilled node out of watch after {gone_after:.2f}s (refresh 0.2s, 3 misses)")
    finally:
        await events.aclose()
        await registry.close()


async def test_interfaces_by_name_and_errors(in_host1: Host) -> None:
    from microbroker.registries import RegistryError

    registry = MdnsRegistry(address="eth0")
    try:
        await registry.open()
        assert registry.interfaces == [in_host1.address]
    finally:
        await registry.close()
    for bad, why in (("eth9", "eth9"), ("10.213.0.200", "not an address of this host")):
        with pytest.raises(RegistryError, match=why):
            await MdnsRegistry(interfaces=[bad]).open()


def test_goodbye_packet_layout() -> None:
    """A sanity check of the helpers' own codec against a hand-made message."""
    data = build_message(7, 0x8400, [], [("a.micro.", TYPE_A, 1, 0, bytes(4))])
    assert data[:12] == struct.pack("!6H", 7, 0x8400, 0, 1, 0, 0)
    assert parse_message(data).answers[0].data == "0.0.0.0"
