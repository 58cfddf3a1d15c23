"""The request links' membership of the callout queue group, node by node (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.msg import Msg

from unibus.authcallout.links import RequestLinks
from unibus.core import naming

URLS = ("tls://n1:4222", "tls://n2:4222", "tls://n3:4222")


class _Subscription:
    def __init__(self, node: _Node) -> None:
        self._node = node

    async def unsubscribe(self) -> None:
        self._node.members -= 1


class _Node:
    """One node's connection: how many members of the callout queue it holds."""

    def __init__(self) -> None:
        self.members = 0
        self.is_connected = True
        self.is_closed = False

    async def subscribe(self, subject: str, *, queue: str, cb: object) -> _Subscription:
        assert (subject, queue) == (naming.CALLOUT_SUBJECT, naming.CALLOUT_QUEUE)
        del cb
        self.members += 1
        return _Subscription(self)

    async def flush(self, timeout: int) -> None:
        del timeout

    async def close(self) -> None:
        self.is_closed = True


async def _ignore(msg: Msg) -> None:
    del msg


async def _links() -> tuple[RequestLinks, dict[str, _Node]]:
    nodes = {url: _Node() for url in URLS}

    async def connector(url: str) -> Any:
        return nodes[url]

    links = RequestLinks(URLS, connector, _ignore)
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
