"""The request links' membership of the callout queue group, node by node (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.msg import Msg

from unibus.authcallout.links import RequestLinks
from unibus.core import naming

URLS = ("tls://n1:4222", "tls://n2:4222", "tls://n3:4222")


class _Subscription:
    def __init__(self, node: _Node, cb: Any) -> None:
        self._node = node
        self._cb = cb

    async def unsubscribe(self) -> None:
        """What nats-py does: the requests already on their way are dropped."""
        self._node.members -= 1
        self._node.in_flight.clear()

    async def drain(self) -> None:
        """What nats-py does: UNSUB, a round trip, then what arrived meanwhile is handled."""
        self._node.members -= 1
        for msg in self._node.in_flight:
            await self._cb(msg)
        self._node.in_flight.clear()


class _Node:
    """One node's connection: how many members of the callout queue it holds."""

    def __init__(self) -> None:
        self.members = 0
        self.is_connected = True
        self.is_closed = False
        self.in_flight: list[Any] = []
        """Requests the node has handed the member, not read by it yet."""

    async def subscribe(self, subject: str, *, queue: str, cb: Any) -> _Subscription:
        assert (subject, queue) == (naming.CALLOUT_SUBJECT, naming.CALLOUT_QUEUE)
        self.members += 1
        return _Subscription(self, cb)

    async def flush(self, timeout: int) -> None:
        del timeout

    async def close(self) -> None:
        self.is_closed = True


async def _ignore(msg: Msg) -> None:
    del msg


async def _links(on_request: Any = _ignore) -> tuple[RequestLinks, dict[str, _Node]]:
    nodes = {url: _Node() for url in URLS}

    async def connector(url: str) -> Any:
        return nodes[url]

    links = RequestLinks(URLS, connector, on_request)
    links.start()
    for _ in range(100):  # bounded: the opens are three tasks without I/O
        if links.nodes_served == len(URLS):
            break
        await asyncio.sleep(0)
    return links, nodes


async def test_an_instance_is_one_member_of_the_queue_on_every_node() -> None:
    links, nodes = await _links()

    assert [node.members for node in nodes.values()] == [1, 1, 1]
    assert links.nodes_served == 3
    await links.close()


async def test_a_paused_instance_is_a_member_nowhere_until_it_resumes() -> None:
    links, nodes = await _links()

    await links.pause()
    assert [node.members for node in nodes.values()] == [0, 0, 0]
    assert links.nodes_served == 0

    await links.resume()
    assert [node.members for node in nodes.values()] == [1, 1, 1]
    await links.close()


async def test_a_link_that_opens_while_paused_joins_only_on_resume() -> None:
    nodes = {url: _Node() for url in URLS}
    late = asyncio.Event()

    async def connector(url: str) -> Any:
        if url == URLS[2]:
            await late.wait()
        return nodes[url]

    links = RequestLinks(URLS, connector, _ignore)
    links.start()
    await asyncio.sleep(0)
    await links.pause()
    late.set()
    for _ in range(100):  # bounded: the last open is one task without I/O
        if len(links._connections) == len(URLS):
            break
        await asyncio.sleep(0)

    assert nodes[URLS[2]].members == 0
    await links.resume()
    assert [node.members for node in nodes.values()] == [1, 1, 1]
    await links.close()
    assert all(node.is_closed for node in nodes.values())


async def test_requests_already_on_their_way_when_an_instance_pauses_are_still_answered() -> None:
    answered: list[str] = []

    async def answer(msg: Any) -> None:
        answered.append(msg)

    links, nodes = await _links(answer)
    nodes[URLS[0]].in_flight.extend(["first", "second"])
    nodes[URLS[1]].in_flight.append("third")
    nodes[URLS[2]].is_connected = False  # its node is gone: nothing to wait for there

    await links.pause()

    assert sorted(answered) == ["first", "second", "third"]
    assert [node.members for node in nodes.values()] == [0, 0, 0]
    await links.close()
