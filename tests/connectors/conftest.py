"""Connector tests: ``async def`` tests run on a fresh event loop each, via asyncio.run.

No asyncio plugin is installed, and one hook is all the connectors need; every server a test
starts binds 127.0.0.1 and is stopped by the test's own ``async with``/``with`` block.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(pyfuncitem.obj(**kwargs))
    return True
