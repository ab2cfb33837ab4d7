"""A message handler that raises: close 1011 with a generic reason; the traceback goes
to the log only; other connections are not affected (README "Bad input")."""
from __future__ import annotations

import logging

import pytest
from helpers import Echo, wait_until, ws_url
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

SECRET = "secret-detail-7f3a"


class Faulty(Echo):
    def on_text(self, cid: int, data: bytes):
        if data == b"raise":
            raise RuntimeError(f"handler failed: {SECRET}")
        if data == b"bad-reply":
            return 42  # not a buffer: the reply cannot be sent
        return data


@pytest.mark.parametrize("trigger", ["raise", "bad-reply"])
def test_handler_error_closes_1011_logs_traceback(run, server, caplog, trigger):
    async def body():
        handler = Faulty()
        srv = await server(handler)
        kw = dict(proxy=None, ping_interval=None)
        async with connect(ws_url(srv), **kw) as victim, connect(ws_url(srv), **kw) as other:
            await victim.send("fine")
            assert await victim.recv() == "fine"
            with caplog.at_level(logging.ERROR, logger="fastrpc"):
                await victim.send(trigger)
                with pytest.raises(ConnectionClosedError) as info:
                    await victim.recv()
            rcvd = info.value.rcvd
            assert rcvd is not None and rcvd.code == 1011
            assert SECRET not in rcvd.reason and "Traceback" not in rcvd.reason
            assert "RuntimeError" not in rcvd.reason and "TypeError" not in rcvd.reason
            # Others carry on.
            await other.send("unaffected")
            assert await other.recv() == "unaffected"
        await wait_until(lambda: len(srv.reactor) == 0, what="both closed")
        m = srv.metrics()
        assert m["closed_handler_error"] == 1
        records = [r for r in caplog.records if r.exc_info and r.name.startswith("fastrpc")]
        assert records, "no traceback logged"
        if trigger == "raise":
            assert any(SECRET in str(r.exc_info[1]) for r in records)
        else:
            assert any(isinstance(r.exc_info[1], TypeError) for r in records)

    run(body())
