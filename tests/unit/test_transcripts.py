"""Play every ``tests/transcripts/*.txt`` against a Dispatcher over a FakeTransport.

The format and the services are in ``tests/transcript_services.py``; a WebSocket runner
plays the same files against a real server.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from fakes import FakeTransport, counter_snapshot, run
from transcript_services import (
    TranscriptError,
    load_transcript,
    make_dispatcher,
    match,
    match_replies,
    parse_transcript,
    substitute,
    transcript_files,
)

CID = 1
REPLY_WAIT = 3.0  # seconds a reply may take (the slowest transcript call is a 0.2 s timeout)

FILES = transcript_files()


def test_there_are_transcripts():
    assert len(FILES) >= 30


def play(path: str, entry: str) -> tuple[Any, Any]:
    """Play one transcript through ``entry``; returns the dispatcher's counters at the end
    (``counter_snapshot``)."""
    exchanges = load_transcript(path)
    name = os.path.basename(path)

    async def main():
        t = FakeTransport()
        d = make_dispatcher(t)
        on_message = d.on_message if entry == "compiled" else d.on_message_py
        bindings = {}
        try:
            for ex in exchanges:
                t.sent.clear()
                reply = on_message(CID, substitute(ex.request, bindings))
                got = [] if reply is None else [reply]
                loop = asyncio.get_running_loop()
                deadline = loop.time() + REPLY_WAIT
                while len(got) + len(t.sent) < len(ex.replies) and loop.time() < deadline:
                    await asyncio.sleep(0.001)
                # Let every call this message started finish, then look for extras.
                await t.wait_for(lambda: d.in_flight == 0, REPLY_WAIT)
                for _ in range(3):
                    await asyncio.sleep(0)
                got += [data for cid, data in t.sent if cid == CID]
                problem = match_replies(ex.replies, got, bindings)
                assert problem is None, f"{name}:{ex.line}: {ex.request}\n{problem}"
            return counter_snapshot(d)
        finally:
            await d.aclose()
            d.registry.close()

    return run(main, timeout=30)


# "compiled": Dispatcher.on_message (fastrpc._fastcall); "python": the pure-Python path
# it falls back to, which must follow the same transcripts on its own.
@pytest.mark.parametrize("entry", ["compiled", "python"])
@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p)[:-4] for p in FILES])
def test_transcript(path, entry):
    play(path, entry)


# The request counters (issue 11) of both paths after the same transcript: each call
# counted once, under the same outcome, whichever path answered it.
@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p)[:-4] for p in FILES])
def test_transcript_counters_same_on_both_paths(path):
    compiled, python = play(path, "compiled"), play(path, "python")
    assert compiled == python
    methods, counters = compiled
    # every transcript sends something: it is counted somewhere
    assert methods or any(v for k, v in counters.items() if k != "batch_buckets"), "nothing counted"


class TestFormat:
    def test_parse(self):
        exchanges = parse_transcript(
            "// c\n\n--> [1]\n<-- {\"a\": 1}\n<-- 2\n  --> x\n// end\n", "t"
        )
        assert [(e.request, e.replies, e.line) for e in exchanges] == [("[1]", [{"a": 1}, 2], 3), ("x", [], 6)]

    @pytest.mark.parametrize("text", ["<-- 1\n", "--> 1\n<-- {bad\n", "--> 1\nstray\n", "// only\n"])
    def test_malformed(self, text):
        with pytest.raises(TranscriptError):
            parse_transcript(text)

    def test_wildcard_and_variables(self):
        b = {}
        assert match({"id": "*", "r": "$x"}, {"id": [1], "r": "0xab"}, b) and b == {"x": "0xab"}
        assert not match({"r": "$x"}, {"r": "0xcd"}, b)
        assert substitute('{"params":["$x"]}', b) == b'{"params":["0xab"]}'
        with pytest.raises(TranscriptError):
            substitute('["$unbound"]', b)

    def test_strict_members_and_booleans(self):
        assert not match({"a": 1}, {"a": 1, "b": 2}, {})
        assert not match({"a": 1}, {"a": True}, {})
        assert match({"a": 1}, {"a": 1.0}, {})
        assert not match([1, 2], [2, 1], {})

    def test_replies_in_any_order_and_counted(self):
        b = {}
        assert match_replies([{"a": "$v"}, {"b": 1}], [b'{"b":1}', b'{"a":5}'], b) is None and b == {"v": 5}
        assert match_replies([], [b"{}"], {}) is not None
        assert match_replies([{"a": 1}], [], {}) is not None
