"""Fixtures: ``make_api`` builds the app over a fresh SQLite store; ``api`` is the default one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import httpx
import pytest_asyncio

from tests.unit.controlplane.harness import Api, ApiFactory, NoNats, settings_from_env
from unibus.controlplane.app import Context, build_app
from unibus.controlplane.metrics import ApiMetrics
from unibus.core.models import Role, UserRecord
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.store import Store
from unibus.migrate.legacy import SQLiteStore


@pytest_asyncio.fixture
async def make_api(tmp_path: Path) -> AsyncIterator[ApiFactory]:
    """Build an ``Api``: ``env`` sets its ``UNIBUS_*`` settings, ``wrap`` fakes store faults.

    ``raise_app_exceptions=False`` shows what a client gets when a handler fails
    unexpectedly, instead of raising the failure in the test.
    """
    opened: list[tuple[httpx.AsyncClient, SQLiteStore]] = []

    async def make(
        *,
        wrap: Callable[[Store], Store] = lambda store: store,
        raise_app_exceptions: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> Api:
        sqlite = await SQLiteStore.open(tmp_path / f"unibus-{len(opened)}.db", create=True)
        store = wrap(sqlite)
        metrics = ApiMetrics()
        context = Context(
            settings=settings_from_env(tmp_path, env),
            store=store,
            nc=NoNats(),
            sys_nc=NoNats(),
            metrics=metrics,
        )
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(
                app=build_app(context), raise_app_exceptions=raise_app_exceptions
            ),
            base_url="http://api.test",
        )
        opened.append((http, sqlite))
        admin = KeyPair.generate(Prefix.USER)
        await sqlite.add_user(UserRecord.new(admin.public_key, "root", Role.ADMIN))
        return Api(http=http, store=store, metrics=metrics, admin=admin)

    try:
        yield make
    finally:
        for http, sqlite in opened:
            await http.aclose()
            await sqlite.close()


@pytest_asyncio.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()
