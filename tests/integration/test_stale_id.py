"""Connection ids are ``generation << 32 | slot``: after a connection ends, its id never
reaches the client that reuses its slot."""
from __future__ import annotations

import pytest
from helpers import Echo, wait_until
from rawclient import OP_TEXT, RawWS

SLOT_MASK = 0xFFFFFFFF


class Recorder(Echo):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def on_text(self, cid: int, data: bytes) -> bytes:
        self.seen.append(cid)
        return data


def test_stale_id_never_reaches_new_client(run, server):
    async def body():
        handler = Recorder()
        srv = await server(handler)
        old = await RawWS.open(srv.port)
        await old.send_text("who am i")
        assert await old.recv() == (OP_TEXT, b"who am i")
        (old_cid,) = handler.seen
        await old.send_close(1000)
        assert (await old.expect_close())[0] == 1000
        old.close()
        await wait_until(lambda: len(srv.reactor) == 0, what="old slot freed")
        assert handler.closes == [(old_cid, 1000)]

        new = await RawWS.open(srv.port)
        await new.send_text("hello")
        assert await new.recv() == (OP_TEXT, b"hello")
        new_cid = handler.seen[-1]
        assert new_cid & SLOT_MASK == old_cid & SLOT_MASK, "slot not reused: test is vacuous"
        assert new_cid != old_cid
        # Every operation on the old id is refused and touches nobody.
        assert srv.send(old_cid, b"for the old client") is False
        assert srv.send(old_cid, b"binary", binary=True) is False
        assert srv.send_many([old_cid], b"fan-out", 1 << 20) == [old_cid]
        assert srv.reactor.close(old_cid, 4000) is False
        srv.close(old_cid, 4000)
        assert srv.reactor.abort(old_cid) is False
        with pytest.raises(KeyError):
            srv.peer(old_cid)
        assert srv.peer(new_cid)[0] == "127.0.0.1"
        srv.begin(old_cid)
        assert srv.metrics()["requests_in_flight"] == 0
        srv.end(old_cid)
        await new.expect_silence(0.3)
        assert srv.metrics()["messages_out"] == 2  # the two echoes, nothing else
        # The new id works.
        assert srv.send(new_cid, b"for the new client") is True
        assert await new.recv() == (OP_TEXT, b"for the new client")
        new.close()

    run(body())
