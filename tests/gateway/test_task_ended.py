"""The daemon's long-running tasks are watched: one that ends before the stop ends the daemon, said and with exit
status 1, so that systemd starts it again."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.daemon import Gateway
from gateway.site_config import load
from lifeline.virtual.broker import free_port


async def test_a_task_that_dies_ends_the_daemon_said_and_with_status_1(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The uplink catches what it knows (a refused publish, a lost link, a store error); anything else, a bug,
    ended its task, which nothing watched: the site box went on taking readings while it sent none upstream and
    kept no disk budget (the uplink's upkeep), and said nothing until its next restart. Here its run raises as
    such a bug would (the one fault injected: there is no known input that does it now)."""
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[district_broker]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[metrics]\nport = {free_port()}\n[store]\npath = "{tmp_path / "gw.sqlite"}"\n')
    gateway = Gateway(load(tmp_path / "site.toml"))

    async def bug() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("a bug in the uplink")

    gateway.uplink.run = bug  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, "lifeline.gateway"):
        assert await asyncio.wait_for(gateway.run(), 20) == 1
    [said] = [r for r in caplog.records if r.getMessage() == "task ended"]
    assert said.levelno == logging.CRITICAL and said.fields == {  # type: ignore[attr-defined]
        "task": "uplink", "error": "RuntimeError('a bug in the uplink')"}
    assert said.exc_info is not None  # its traceback, once
    assert [r.getMessage() for r in caplog.records][-1] == "stopped"
