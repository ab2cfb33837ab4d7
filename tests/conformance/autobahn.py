"""Autobahn|Testsuite server conformance: groups 1-7, 9 and 10, with our own client and verdicts.

    python -m tests.conformance.autobahn \\
        --cmd "python examples/echo_server.py --port {port} --max-message-size 16777216" \\
        --cases 1,2,3,4,5,6,7,9,10 [--json out.json] [--markdown out.md]

The command is started with ``{port}`` replaced by a free 127.0.0.1 port, every case opens
one connection to it, and the server is stopped at the end (SIGTERM to its process group,
SIGKILL after 5 s). ``--connect HOST:PORT`` runs against a server that is already running.
``--cases`` takes groups or case-id prefixes (``6.4``, ``9.1.6``). Exit status: 0 when no
case FAILED, 1 when one did, 2 when the run itself could not be made (server did not
start, the case files did not load, the case count per group is not the expected one).

**Group 9 needs raised server limits.** It sends messages of up to 16 MiB (9.1.6,
9.2.6) and messages of 65536 frames (9.3.1, 9.4.1: 4 MiB in 64-octet fragments), and the
echo of a 16 MiB message is one 16 MiB frame queued for output. So the server under test
must accept messages of 16777216 octets (hence ``--max-message-size 16777216`` above),
65536 fragments per message, and more than 16 MiB of pending output per connection.
Below that, those cases end in close 1009 or a dropped connection and are FAILED: the
server keeping a limit, not a framing bug, but a FAILED all the same.

Where the cases come from, and what is ours
-------------------------------------------
The case files are Autobahn's, as vendored (translated from Python 2) by PyPI's
``kosoku``. We import them and run their scripts: each case's ``onOpen`` drives
``self.p``, the client connection, and fills ``self.expected`` (the accepted event
sequences, keyed OK / NON-STRICT) and ``self.expectedClose`` (who must start the close,
whether the close must be clean, the acceptable close codes). Everything else is written
here: ``self.p`` (handshake, framing, masking, chopping, Autobahn's close timings), and
the verdict. kosoku's own runner and verdicts are not used, because they cannot be
trusted as they come:

(a) The case files were written for Python 2, where every payload literal was a byte
    string. In Python 3 ``'\\xce\\xba'`` is a two-character ``str``; encoding it as UTF-8
    (what kosoku does) sends ``c3 8e c2 ba`` instead of ``ce ba``: the valid multi-byte
    payloads of group 6 (6.2.4 and 6.5 onwards) and the invalid close reason of 7.5.1
    are not what the case means to send. ``wire_bytes`` restores the Python 2 bytes: a
    ``str`` payload is Latin-1 (one character per octet), except in 6.2.1-6.2.3 whose
    payloads were written as literal UTF-8 text in the Python 2 source. Before the run
    we check every group-6 case against Python's strict UTF-8 decoder (``_self_check``).
(b) kosoku does not check what the server sends back. ``_ServerFrames`` and
    ``_Client`` check every server frame (unmasked, RSV 0, known opcode, minimal length
    encoding, control frames final and <= 125 octets, continuation order, text messages
    and close reasons valid UTF-8, close codes that may be sent, nothing after the
    server's close) and ``judge`` compares the echoed payload and message type byte for
    byte. Group 9 cases, which only count octets in Autobahn, must echo exactly what was
    sent.
(c) kosoku sends one fixed ``Sec-WebSocket-Key`` (the RFC's sample nonce) on every
    connection, so a server that answers a constant ``Sec-WebSocket-Accept`` passes. We
    send a fresh random key per connection and verify the accept value and the rest of
    the 101 response (RFC 6455 section 4.1).

Verdict of one case (``judge``), first match wins:
  FAILED          the harness or the case script raised; the opening handshake failed;
                  the server broke a framing rule; the case hit the harness timeout;
                  the events (messages, pongs, the case's own timeout markers) match no
                  expected sequence; the wrong side started the close; the close was not
                  clean where the case requires it; the server's close code is not one
                  the case accepts; or we had to drop the TCP connection ourselves
                  (Autobahn's FAILED BY CLIENT: a server must close, not wait).
  INFORMATIONAL   7.1.6, 7.13.1, 7.13.2: the spec leaves the outcome open (after the
                  framing and handshake checks above, which still apply).
  NON-STRICT      the events matched the case's NON-STRICT sequence (e.g. a bad frame
                  answered only after the whole message arrived, 6.4.x).
  OK              everything as the case expects.

Autobahn's timings are kept: our close gets 1 s for the server's close reply, and after
the closing handshake the server gets 1 s to close the TCP connection.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import codecs
import collections
import dataclasses
import hashlib
import importlib
import json
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

# --- what a complete run contains --------------------------------------------------------

GROUPS = (1, 2, 3, 4, 5, 6, 7, 9, 10)
EXPECTED_CASES = {1: 16, 2: 11, 3: 7, 4: 10, 5: 20, 6: 145, 7: 37, 9: 54, 10: 1}

# Case-file modules that generate several cases: module -> class-list attributes.
GENERATORS = {
    "case6_x_x": ("Case6_X_X",),
    "case7_7_X": ("Case7_7_X",),
    "case7_9_X": ("Case7_9_X",),
    "case9_7_X": ("Case9_7_X", "Case9_8_X"),
}

# The spec leaves these outcomes open; Autobahn reports them INFORMATIONAL.
INFORMATIONAL = {
    "7.1.6": "256 KiB message, close, ping sent back to back: echo before or after close",
    "7.13.1": "close code 5000 (outside every range the RFC defines)",
    "7.13.2": "close code 65535 (outside every range the RFC defines)",
}

# Python 2 wrote these payloads as literal UTF-8 text in the source file; everywhere else
# a str payload is a Python 2 byte string written with \x escapes (Latin-1 here).
UTF8_SOURCE_CASES = frozenset({"6.2.1", "6.2.2", "6.2.3"})

# --- timings (seconds) -------------------------------------------------------------------

OPEN_HANDSHAKE_TIMEOUT = 5.0  # connect + 101 response
CLOSE_HANDSHAKE_TIMEOUT = 1.0  # our close -> the server's close (Autobahn's default)
SERVER_DROP_TIMEOUT = 1.0  # closing handshake done -> the server closes TCP (Autobahn's)
DEFAULT_CASE_TIMEOUT = 60.0
DEFAULT_RUN_TIMEOUT = 600.0
SERVER_START_TIMEOUT = 20.0
SERVER_STOP_TIMEOUT = 5.0
# Multiplies CLOSE_HANDSHAKE_TIMEOUT, SERVER_DROP_TIMEOUT and the case scripts' own
# timers (killAfter, closeAfter, continueLater), keeping their ratios: --time-scale 3 on
# a loaded machine. Autobahn's semantics are at 1.
TIME_SCALE = 1.0

PACE_DELAY = 0.001  # pause after each chop / sync frame, so it reaches the server alone
PACE_BUDGET = 0.5  # ... for this much time per connection, then only a loop turn (9.5.x
#                    sends 16384 chops of 64 octets: 16 s of pauses otherwise)
MAX_RESPONSE_HEAD = 16 * 1024  # octets of HTTP response head we accept
LOG_FRAMES = 48  # frames kept per direction for the report (the rest are counted)

# --- RFC 6455 ------------------------------------------------------------------------------

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OPCODES = {OP_CONT: "CONT", OP_TEXT: "TEXT", OP_BINARY: "BINARY", OP_CLOSE: "CLOSE",
           OP_PING: "PING", OP_PONG: "PONG"}

OK, NON_STRICT, INFO, UNIMPLEMENTED, FAILED = (
    "OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
VERDICTS = (OK, NON_STRICT, INFO, UNIMPLEMENTED, FAILED)


def accept_for(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def may_send_close_code(code: int) -> bool:
    """Codes an endpoint may put in a close frame: 1000-1003, 1007-1014 (RFC 6455 7.4.1
    and the IANA registry), 3000-4999 (7.4.2). 1004-1006, 1015 and the rest: never."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def apply_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    """XOR ``data`` with the 4-octet ``key``, starting at key octet ``offset % 4``."""
    n = len(data)
    if n == 0:
        return b""
    k = key[offset % 4:] + key[:offset % 4]
    stream = (k * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def frame_header(opcode: int, length: int, fin: bool, rsv: int, key: bytes | None) -> bytes:
    """A frame header with the minimal length encoding; ``key`` None means unmasked."""
    b0 = (0x80 if fin else 0) | ((rsv % 8) << 4) | (opcode % 16)
    m = 0x80 if key is not None else 0
    if length <= 125:
        head = bytes((b0, m | length))
    elif length <= 0xFFFF:
        head = bytes((b0, m | 126)) + struct.pack("!H", length)
    else:
        head = bytes((b0, m | 127)) + struct.pack("!Q", length)
    return head + (key or b"")


def utf8_state(data: bytes, complete: bool) -> bool:
    """True when ``data`` is valid UTF-8 (RFC 3629: no surrogates, nothing above
    U+10FFFF, no overlong forms). With ``complete`` False a truncated last character is
    still valid (more octets may follow)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def wire_bytes(case_id: str, value: Any) -> bytes:
    """The octets a case-file payload meant in Python 2 (see the module docstring, (a))."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, int):  # py2 indexing a str gave a 1-character str (6.4.2, 6.4.4)
        return bytes((value,))
    if isinstance(value, str):
        if case_id in UTF8_SOURCE_CASES:
            return value.encode("utf-8")
        return value.encode("latin-1")
    raise TypeError(f"case {case_id}: payload of type {type(value).__name__}")


def preview(data: bytes, limit: int = 24) -> str:
    """``len=N hex`` (whole when short, else the head) for reports."""
    if len(data) <= limit:
        return f"len={len(data)} 0x{data.hex()}"
    return f"len={len(data)} 0x{data[:limit].hex()}..."


# --- loading Autobahn's case files (from kosoku) ------------------------------------------

@dataclasses.dataclass(frozen=True)
class CaseSpec:
    case_id: str
    group: int
    cls: type
    description: str
    expectation: str


def _id_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in case_id.split("."))


def load_cases() -> list[CaseSpec]:
    """Every case of GROUPS, sorted by id. kosoku's ``initialize_shims`` puts its case
    and shim directories on ``sys.path`` (so ``from case import Case`` and
    ``autobahn.websocket.protocol`` resolve) and patches ``binascii.b2a_hex`` to take a
    py2-style str or int, which some case descriptions are built with."""
    from kosoku import _caseindex  # private, but it is how kosoku itself loads the files

    _caseindex.initialize_shims()
    cases_dir = Path(_caseindex.__file__).resolve().parent / "cases"
    classes: list[type] = []
    for path in sorted(cases_dir.glob("case*.py")):
        name = path.stem
        m = re.fullmatch(r"case(\d+)_([0-9xX_]+)", name)
        if not m or int(m.group(1)) not in GROUPS:
            continue
        module = importlib.import_module(name)
        if "x" in m.group(2).lower():
            if name not in GENERATORS:
                raise RuntimeError(f"{path}: a case generator this harness does not know")
            for attr in GENERATORS[name]:
                classes.extend(getattr(module, attr))
        else:
            classes.append(getattr(module, "Case" + name[len("case"):]))
    specs = {}
    for cls in classes:
        case_id = cls.__name__[len("Case"):].replace("_", ".")
        specs[case_id] = CaseSpec(case_id, int(case_id.split(".")[0]), cls,
                                  _plain(getattr(cls, "DESCRIPTION", "")),
                                  _plain(getattr(cls, "EXPECTATION", "")))
    return [specs[k] for k in sorted(specs, key=_id_key)]


def _plain(text: str) -> str:
    return " ".join(re.sub(r"<br\s*/?>|<[^>]+>", " ", str(text)).split())


def select(specs: list[CaseSpec], patterns: list[str]) -> list[CaseSpec]:
    """Cases whose id equals a pattern or starts with ``pattern + '.'``."""
    return [s for s in specs
            if any(s.case_id == p or s.case_id.startswith(p + ".") for p in patterns)]


def _self_check(specs: list[CaseSpec]) -> list[str]:
    """Problems with the case data itself, found before anything is sent.

    Group 6 generated cases (6.5 onwards) carry ``isValid`` (decided by kosoku's Rust
    UTF-8 validator for 6.6.x), which must agree with Python's strict decoder on the
    octets we will send, and their DESCRIPTION ends in ``Payload: 0x<hex>``, which must
    be those octets: sending the UTF-8 encoding of the payload (kosoku's runner) fails
    this for every valid multi-byte payload.
    """
    problems = []
    for s in specs:
        if hasattr(s.cls, "isValid") and hasattr(s.cls, "PAYLOAD"):
            octets = wire_bytes(s.case_id, s.cls.PAYLOAD)
            ours = utf8_state(octets, complete=True)
            if ours != bool(s.cls.isValid):
                problems.append(f"{s.case_id}: case says valid={s.cls.isValid}, "
                                f"Python's UTF-8 decoder says {ours}")
            stated = re.search(r"Payload: 0x(?:b')?([0-9a-f]*)", str(s.cls.DESCRIPTION))
            if not stated or stated.group(1) != octets.hex():
                problems.append(f"{s.case_id}: we would send 0x{octets.hex()}, the case "
                                f"describes {stated.group(0) if stated else 'no payload'}")
    return problems


# --- the server's frames -----------------------------------------------------------------

class Violation(Exception):
    """The server broke an RFC 6455 rule a client must fail the connection for."""


class _ServerFrames:
    """Incremental parser of server-to-client frames, strict on every header rule.

    ``feed`` returns the frames completed by the data, as ``(fin, opcode, payload)``;
    it raises ``Violation`` at the first rule broken. The header is checked as soon as
    it is complete, before any payload is buffered.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head: tuple[bool, int, int] | None = None  # parsed header awaiting payload

    def feed(self, data: bytes) -> list[tuple[bool, int, bytes]]:
        buf = self._buf
        buf += data
        out = []
        while True:
            if self._head is None:
                if len(buf) < 2:
                    break
                b0, b1 = buf[0], buf[1]
                length, used = b1 & 0x7F, 2
                if length == 126:
                    if len(buf) < 4:
                        break
                    length, used = struct.unpack_from("!H", buf, 2)[0], 4
                    if length < 126:
                        raise Violation(f"length {length} sent in the 16-bit form (not minimal)")
                elif length == 127:
                    if len(buf) < 10:
                        break
                    length, used = struct.unpack_from("!Q", buf, 2)[0], 10
                    if length >> 63:
                        raise Violation("64-bit length with the most significant bit set")
                    if length < 0x10000:
                        raise Violation(f"length {length} sent in the 64-bit form (not minimal)")
                fin, rsv, opcode = bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F
                if b1 & 0x80:
                    raise Violation(f"masked {OPCODES.get(opcode, opcode)} frame from the server")
                if rsv:
                    raise Violation(f"RSV bits {rsv:03b} set without a negotiated extension")
                if opcode not in OPCODES:
                    raise Violation(f"reserved opcode {opcode}")
                if opcode >= 8 and not fin:
                    raise Violation(f"fragmented {OPCODES[opcode]} control frame")
                if opcode >= 8 and length > 125:
                    raise Violation(f"{OPCODES[opcode]} control frame of {length} octets (> 125)")
                del buf[:used]
                self._head = (fin, opcode, length)
            fin, opcode, length = self._head
            if len(buf) < length:
                break
            payload = bytes(buf[:length])
            del buf[:length]
            self._head = None
            out.append((fin, opcode, payload))
        return out


# --- the client connection: Autobahn's ``self.p`` -----------------------------------------

class HarnessError(Exception):
    """The harness or a case script went wrong (never the server's fault)."""


class _Factory:
    isServer = False


class _Client(asyncio.Protocol):
    """One case's connection. The camelCase methods and attributes are the part of
    Autobahn's ``WebSocketProtocol`` the case files of groups 1-10 use, with Autobahn's
    semantics (``sendFrame`` writes any frame, even an invalid one, in any state;
    ``sendMessage``/``beginMessage``... only while OPEN; ``sendCloseFrame`` moves OPEN to
    CLOSING). The snake_case attributes are what ``judge`` reads."""

    STATE_CLOSED, STATE_CONNECTING, STATE_CLOSING, STATE_OPEN = 0, 1, 2, 3
    CLOSE_STATUS_CODE_NORMAL = 1000
    CLOSE_STATUS_CODE_GOING_AWAY = 1001
    CLOSE_STATUS_CODE_PROTOCOL_ERROR = 1002
    CLOSE_STATUS_CODE_UNSUPPORTED_DATA = 1003
    CLOSE_STATUS_CODE_RESERVED1 = 1004
    CLOSE_STATUS_CODE_NULL = 1005
    CLOSE_STATUS_CODE_ABNORMAL_CLOSE = 1006
    CLOSE_STATUS_CODE_INVALID_PAYLOAD = 1007
    CLOSE_STATUS_CODE_POLICY_VIOLATION = 1008
    CLOSE_STATUS_CODE_MESSAGE_TOO_BIG = 1009
    CLOSE_STATUS_CODE_MANDATORY_EXTENSION = 1010
    CLOSE_STATUS_CODE_INTERNAL_ERROR = 1011
    CLOSE_STATUS_CODE_TLS_HANDSHAKE_FAILED = 1015

    def __init__(self, spec: CaseSpec, host: str, port: int, path: str) -> None:
        self.spec = spec
        self._host, self._port, self._path = host, port, path
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._t0 = time.monotonic()
        self._timers: list[asyncio.TimerHandle] = []
        self._out: collections.deque[tuple[bytes, bool]] = collections.deque()
        self._out_wake = asyncio.Event()
        self._pace_left = PACE_BUDGET
        self._writer: asyncio.Task[None] | None = None
        self._head = bytearray()
        self._frames = _ServerFrames()
        self._rx_msg: tuple[int, list[bytes]] | None = None  # message being received
        self._tx_msg: tuple[int, list[bytes]] | None = None  # message being sent
        self._stream: dict[str, Any] = {}  # beginMessage/beginMessageFrame state

        # Autobahn's attributes, read or written by the case files
        self.state = self.STATE_CONNECTING
        self.factory = _Factory()
        self.createWirelog = True
        self.autoFragmentSize = 0
        self.txFrameStats: collections.Counter[int] = collections.Counter()
        self.connectionWasOpen = False
        self.closedByMe = False
        self.failedByMe = False
        self.droppedByMe = False
        self.wasClean = False
        self.localCloseCode: int | None = None
        self.localCloseReason: bytes | None = None
        self.remoteCloseCode: int | None = None
        self.remoteCloseReason: bytes | None = None

        # what judge() reads
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.handshake_error: str | None = None
        self.violations: list[str] = []
        self.harness_errors: list[str] = []
        self.events: list[tuple] = []  # ("message", bytes, binary) / ("ping"|"pong", bytes)
        self.sent_messages: list[tuple[bytes, bool]] = []
        self.remote_close_received = False
        self.drop_reason: str | None = None
        self.tcp_closed_by: str | None = None
        self.tx_log: list[str] = []
        self.rx_log: list[str] = []
        self.tx_frames = 0
        self.rx_frames = 0
        self.case: Any = None

    # -- plumbing ------------------------------------------------------------------------

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        self._timers.append(self._loop.call_later(delay, fn))

    def _call_case(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a case script or this harness is broken: say so
            self.harness_errors.append(f"{what}: {type(exc).__name__}: {exc}")
            self._drop("harness error")

    def _send(self, data: bytes, paced: bool) -> None:
        """Queue octets in order; ``paced`` items go out in their own write followed by a
        pause (Autobahn's ``sync``/``chopsize``: separate TCP segments, separate reads)."""
        if self.state == self.STATE_CLOSED or self._transport is None:
            return
        self._out.append((data, paced))
        self._out_wake.set()

    async def _write_loop(self) -> None:
        while True:
            await self._out_wake.wait()
            self._out_wake.clear()
            while self._out:
                t = self._transport
                if t is None or t.is_closing():
                    self._out.clear()
                    return
                data, paced = self._out.popleft()
                if paced:
                    t.write(data)
                    if self._pace_left > 0:
                        self._pace_left -= PACE_DELAY
                        await asyncio.sleep(PACE_DELAY)
                    else:
                        await asyncio.sleep(0)
                    continue
                batch = [data]
                while self._out and not self._out[0][1]:
                    batch.append(self._out.popleft()[0])
                t.write(b"".join(batch))

    def _drop(self, reason: str) -> None:
        """Close the TCP connection from our side (Autobahn's dropConnection(abort))."""
        if self.state == self.STATE_CLOSED:
            return
        self.state = self.STATE_CLOSED
        self.droppedByMe = True
        self.drop_reason = reason
        if self._transport is not None:
            self._transport.abort()

    def _log(self, log: list[str], text: str) -> None:
        """Keep the first LOG_FRAMES entries and, past them, the latest one."""
        entry = f"{(time.monotonic() - self._t0) * 1000:.1f}ms {text}"
        if len(log) <= LOG_FRAMES:
            log.append(entry)
        else:
            log[-1] = entry

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = self._loop.create_task(self._write_loop())
        request = (f"GET {self._path} HTTP/1.1\r\n"
                   f"Host: {self._host}:{self._port}\r\n"
                   "Upgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {self.key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   "User-Agent: fastrpc-autobahn-harness\r\n\r\n")
        transport.write(request.encode("ascii"))
        self._later(OPEN_HANDSHAKE_TIMEOUT, self._open_timeout)

    def _open_timeout(self) -> None:
        if self.state == self.STATE_CONNECTING:
            self.handshake_error = f"no complete 101 response within {OPEN_HANDSHAKE_TIMEOUT:g} s"
            self._drop("opening handshake timeout")

    def data_received(self, data: bytes) -> None:
        if self.state == self.STATE_CLOSED:
            return
        if self.state == self.STATE_CONNECTING:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_RESPONSE_HEAD:
                    self.handshake_error = f"response head over {MAX_RESPONSE_HEAD} octets"
                    self._drop("bad handshake")
                return
            head, rest = bytes(self._head[:end]), bytes(self._head[end + 4:])
            self._head.clear()
            error = self._check_response(head)
            if error:
                self.handshake_error = error
                self._drop("bad handshake")
                return
            self.state = self.STATE_OPEN
            self.connectionWasOpen = True
            self._call_case("onOpen", self.case.onOpen)
            data = rest
            if not data or self.state == self.STATE_CLOSED:
                return
        try:
            frames = self._frames.feed(data)
        except Violation as exc:
            self._violation(str(exc))
            return
        for fin, opcode, payload in frames:
            if self.state == self.STATE_CLOSED:
                return
            self._on_frame(fin, opcode, payload)

    def _check_response(self, head: bytes) -> str | None:
        """RFC 6455 section 4.1, the client's checks of the server's handshake."""
        try:
            lines = head.decode("iso-8859-1").split("\r\n")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            return "response head is not text"
        status = lines[0]
        m = re.fullmatch(r"HTTP/1\.1 (\d{3})(?: .*)?", status)
        if not m or m.group(1) != "101":
            return f"status line {status!r} (expected 'HTTP/1.1 101 ...')"
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return f"malformed header line {line!r}"
            headers.setdefault(name.lower(), []).append(value.strip())
        upgrade = ",".join(headers.get("upgrade", []))
        if upgrade.lower() != "websocket":
            return f"Upgrade: {upgrade!r} (expected 'websocket')"
        tokens = {t.strip().lower() for v in headers.get("connection", []) for t in v.split(",")}
        if "upgrade" not in tokens:
            return f"Connection: {headers.get('connection')!r} has no 'upgrade' token"
        accept = headers.get("sec-websocket-accept", [])
        if accept != [accept_for(self.key)]:
            return (f"Sec-WebSocket-Accept {accept!r} for key {self.key!r}, "
                    f"expected {accept_for(self.key)!r}")
        for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
            if any(headers.get(name, [])):
                return f"{name} {headers[name]!r} in the response, but none was offered"
        return None

    def eof_received(self) -> bool:
        return False  # the server closed its side: close ours, connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        for t in self._timers:
            t.cancel()
        if self.state != self.STATE_CLOSED:
            self.state = self.STATE_CLOSED
            self.tcp_closed_by = "server"
            if self.handshake_error is None and not self.connectionWasOpen:
                self.handshake_error = "connection closed before a complete 101 response"
        else:
            self.tcp_closed_by = self.tcp_closed_by or "harness"
        self.wasClean = self.remote_close_received and not self.droppedByMe
        self._transport = None
        self._out_wake.set()
        if not self.done.done():
            self.done.set_result(None)

    # -- frames from the server ------------------------------------------------------------

    def _violation(self, text: str) -> None:
        self.violations.append(text)
        self.failedByMe = True
        self._drop(f"protocol violation: {text}")

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        self.rx_frames += 1
        if opcode == OP_CLOSE and len(payload) >= 2:
            reason = payload[2:].decode("utf-8", "backslashreplace")
            self._log(self.rx_log, f"CLOSE  code={struct.unpack('!H', payload[:2])[0]} "
                                   f"reason={reason!r}")
        else:
            self._log(self.rx_log, f"{OPCODES[opcode]:6} fin={int(fin)} {preview(payload)}")
        if self.remote_close_received:
            self._violation(f"{OPCODES[opcode]} frame after the server's close frame")
            return
        if opcode == OP_CLOSE:
            self._on_close_frame(payload)
        elif opcode == OP_PING:
            if self.state == self.STATE_OPEN:
                self.sendFrame(opcode=OP_PONG, payload=payload)
            self.events.append(("ping", payload))
            self._call_case("onPing", self.case.onPing, payload)
        elif opcode == OP_PONG:
            self.events.append(("pong", payload))
            self._call_case("onPong", self.case.onPong, payload)
        elif opcode == OP_CONT:
            if self._rx_msg is None:
                self._violation("continuation frame with no message in progress")
                return
            self._rx_msg[1].append(payload)
            if fin:
                self._message_done()
        else:
            if self._rx_msg is not None:
                self._violation(f"{OPCODES[opcode]} frame while a fragmented message "
                                "is in progress")
                return
            self._rx_msg = (opcode, [payload])
            if fin:
                self._message_done()

    def _message_done(self) -> None:
        assert self._rx_msg is not None
        opcode, parts = self._rx_msg
        self._rx_msg = None
        data = b"".join(parts)
        binary = opcode == OP_BINARY
        if not binary and not utf8_state(data, complete=True):
            self._violation(f"text message that is not valid UTF-8 ({preview(data)})")
            return
        self.events.append(("message", data, binary))
        self._call_case("onMessage", self.case.onMessage, data, binary)

    def _on_close_frame(self, payload: bytes) -> None:
        if len(payload) == 1:
            self._violation("close frame with a 1-octet payload")
            return
        code, reason = None, b""
        if len(payload) >= 2:
            code, reason = struct.unpack("!H", payload[:2])[0], payload[2:]
            if not may_send_close_code(code):
                self._violation(f"close code {code}, which an endpoint must never send")
                return
            if not utf8_state(reason, complete=True):
                self._violation(f"close reason that is not valid UTF-8 ({preview(reason)})")
                return
        self.remote_close_received = True
        self.remoteCloseCode, self.remoteCloseReason = code, reason
        if self.state == self.STATE_OPEN:  # the server starts the closing handshake
            self.sendCloseFrame(code=self.CLOSE_STATUS_CODE_NORMAL, isReply=True)
        self._later(SERVER_DROP_TIMEOUT * TIME_SCALE, self._server_drop_timeout)

    def _server_drop_timeout(self) -> None:
        self._drop(f"the server did not close TCP within {SERVER_DROP_TIMEOUT * TIME_SCALE:g} s "
                   "after the closing handshake")

    # -- Autobahn's sending API ------------------------------------------------------------

    def _bytes(self, value: Any) -> bytes:
        return wire_bytes(self.spec.case_id, value)

    def _track_tx(self, opcode: int, fin: bool, data: bytes) -> None:
        """Rebuild the data messages we send (group 9 expects them echoed)."""
        if opcode in (OP_TEXT, OP_BINARY):
            if self._tx_msg is not None:  # deliberately broken sequence: forget it
                self._tx_msg = None
            self._tx_msg = (opcode, [data])
        elif opcode == OP_CONT and self._tx_msg is not None:
            self._tx_msg[1].append(data)
        else:
            return
        if fin:
            op, parts = self._tx_msg
            self._tx_msg = None
            msg = b"".join(parts)
            self.sent_messages.append((msg, op == OP_BINARY))

    def sendFrame(self, opcode: int, payload: Any = b"", fin: bool = True, rsv: int = 0,
                  mask: Any = None, payload_len: int | None = None,
                  chopsize: int | None = None, sync: bool = False) -> None:
        data = self._bytes(payload)
        if payload_len is not None:
            if not data:
                raise HarnessError("payload_len needs a non-empty payload to repeat")
            data = (data * (payload_len // len(data) + 1))[:payload_len]
        key = self._bytes(mask) if mask else os.urandom(4)
        wire = frame_header(opcode, len(data), fin, rsv, key) + apply_mask(data, key)
        self.txFrameStats[opcode] += 1
        self.tx_frames += 1
        note = f" chop={chopsize}" if chopsize else (" sync" if sync else "")
        self._log(self.tx_log, f"{OPCODES.get(opcode, f'OP{opcode}'):6} fin={int(fin)} "
                               f"rsv={rsv} {preview(data)}{note}")
        self._track_tx(opcode, fin, data)
        if chopsize:
            for i in range(0, len(wire), chopsize):
                self._send(wire[i:i + chopsize], True)
        else:
            self._send(wire, sync)

    def sendMessage(self, payload: Any, isBinary: bool = False, fragmentSize: int | None = None,
                    sync: bool = False, doNotCompress: bool = False) -> None:
        if self.state != self.STATE_OPEN:
            return
        data = self._bytes(payload)
        opcode = OP_BINARY if isBinary else OP_TEXT
        size = self.autoFragmentSize if fragmentSize is None else fragmentSize
        if not size or len(data) <= size:
            self.sendFrame(opcode=opcode, payload=data, sync=sync)
            return
        for i in range(0, len(data), size):
            self.sendFrame(opcode=opcode if i == 0 else OP_CONT, payload=data[i:i + size],
                           fin=i + size >= len(data), sync=sync)

    def beginMessage(self, isBinary: bool = False, doNotCompress: bool = False) -> None:
        if self.state != self.STATE_OPEN:
            return
        self._stream = {"opcode": OP_BINARY if isBinary else OP_TEXT, "first": True}

    def beginMessageFrame(self, length: int) -> None:
        """A frame header with FIN unset; its payload follows in sendMessageFrameData."""
        if self.state != self.STATE_OPEN:
            return
        st = self._stream
        opcode = st["opcode"] if st["first"] else OP_CONT
        st.update(first=False, key=os.urandom(4), offset=0, length=length)
        self.txFrameStats[opcode] += 1
        self.tx_frames += 1
        self._log(self.tx_log, f"{OPCODES[opcode]:6} fin=0 rsv=0 len={length} (streamed)")
        if self._tx_msg is None:
            self._tx_msg = (opcode, [])
        self._send(frame_header(opcode, length, False, 0, st["key"]), False)

    def sendMessageFrameData(self, payload: Any, sync: bool = False) -> None:
        if self.state != self.STATE_OPEN:
            return
        st = self._stream
        data = self._bytes(payload)[: st["length"] - st["offset"]]
        self._log(self.tx_log, f"  data {preview(data)}" + (" sync" if sync else ""))
        if self._tx_msg is not None:
            self._tx_msg[1].append(data)
        self._send(apply_mask(data, st["key"], st["offset"]), sync)
        st["offset"] += len(data)

    def endMessage(self) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.sendFrame(opcode=OP_CONT, payload=b"", fin=True)

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: Any = None,
                       isReply: bool = False) -> None:
        if self.state != self.STATE_OPEN:
            return
        payload = b"" if code is None else struct.pack("!H", code)
        if reasonUtf8 is not None:
            payload += self._bytes(reasonUtf8)
        self.sendFrame(opcode=OP_CLOSE, payload=payload)
        self.state = self.STATE_CLOSING
        self.closedByMe = not isReply
        self.localCloseCode = code
        self.localCloseReason = None if reasonUtf8 is None else self._bytes(reasonUtf8)
        if self.closedByMe:
            self._later(CLOSE_HANDSHAKE_TIMEOUT * TIME_SCALE, self._close_handshake_timeout)

    def sendClose(self, code: int | None = None, reason: str | None = None) -> None:
        reason_utf8 = None if reason is None else str(reason).encode("utf-8")
        self.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)

    def _close_handshake_timeout(self) -> None:
        if self.state != self.STATE_CLOSED and not self.remote_close_received:
            self._drop(f"no close frame from the server within "
                       f"{CLOSE_HANDSHAKE_TIMEOUT * TIME_SCALE:g} s of ours")

    def killAfter(self, delay: float) -> None:
        def kill() -> None:
            if self.state != self.STATE_CLOSED:
                self.failedByMe = True
                self._drop(f"the case's kill timer ({delay * TIME_SCALE:g} s) fired: the "
                           "connection was still open")
        self._later(delay * TIME_SCALE, kill)

    def closeAfter(self, delay: float) -> None:
        def close() -> None:
            if self.state != self.STATE_CLOSED:
                self.sendClose()
        self._later(delay * TIME_SCALE, close)

    def continueLater(self, delay: float, fun: Callable[[], None], tag: Any = None) -> None:
        def go() -> None:
            if self.state != self.STATE_CLOSED:
                self._call_case(f"continueLater({tag})", fun)
        self._later(delay * TIME_SCALE, go)

    def enableWirelog(self, enable: bool) -> None:
        self.createWirelog = enable


# --- the verdict ---------------------------------------------------------------------------

@dataclasses.dataclass
class Observation:
    """Everything ``judge`` decides on, as plain data (so it can be tested alone)."""

    case_id: str
    expected: dict[str, list[tuple]]  # label -> events, payloads already octets
    expected_close: dict[str, Any]
    events: list[tuple]
    handshake_error: str | None = None
    violations: list[str] = dataclasses.field(default_factory=list)
    harness_errors: list[str] = dataclasses.field(default_factory=list)
    timed_out: str | None = None
    closed_by_me: bool = False
    was_clean: bool = False
    remote_close_received: bool = False
    remote_close_code: int | None = None
    dropped_by_me: bool = False
    drop_reason: str | None = None
    informational: bool = False


def describe_events(events: list[tuple], limit: int = 4) -> str:
    def one(e: tuple) -> str:
        if e[0] == "message":
            return f"{'binary' if e[2] else 'text'} message {preview(e[1])}"
        if e[0] in ("ping", "pong"):
            return f"{e[0]} {preview(e[1])}"
        return f"{e[0]} {e[1]!r}"
    if not events:
        return "nothing"
    shown = ", ".join(one(e) for e in events[:limit])
    return shown + (f", ... ({len(events)} events)" if len(events) > limit else "")


def _first_difference(expected: list[tuple], got: list[tuple]) -> str:
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            if e[0] == g[0] == "message" and e[2] == g[2]:
                at = next((j for j, (a, b) in enumerate(zip(e[1], g[1])) if a != b),
                          min(len(e[1]), len(g[1])))
                return (f"event {i + 1}: {'binary' if e[2] else 'text'} message of "
                        f"{len(g[1])} octets where {len(e[1])} were expected, first "
                        f"difference at octet {at}")
            return f"event {i + 1}: expected {describe_events([e])}, got {describe_events([g])}"
    if len(expected) != len(got):
        return f"expected {len(expected)} events, got {len(got)}"
    return "equal"


def judge(obs: Observation) -> tuple[str, list[str]]:
    """The case's verdict and the reasons for it (see the module docstring)."""
    fatal = []
    fatal += [f"harness error (not the server's fault): {e}" for e in obs.harness_errors]
    if obs.handshake_error:
        fatal.append(f"opening handshake: {obs.handshake_error}")
    fatal += [f"server broke RFC 6455: {v}" for v in obs.violations]
    if obs.timed_out:
        fatal.append(obs.timed_out)
    if fatal:
        return FAILED, fatal

    reasons = []
    behavior = None
    for label, events in obs.expected.items():
        if events == obs.events:
            behavior = label
            break
    if behavior is None:
        best = obs.expected.get(OK, [])
        reasons.append(f"events: expected {describe_events(best)}; got "
                       f"{describe_events(obs.events)} ({_first_difference(best, obs.events)})")

    ec = obs.expected_close
    got_code = obs.remote_close_code if obs.remote_close_received else None
    close_desc = (f"server close code {got_code}" if obs.remote_close_received and got_code
                  else "server close frame without code" if obs.remote_close_received
                  else "no close frame from the server")
    if ec["closedByMe"] != obs.closed_by_me:
        if ec["closedByMe"] and obs.remote_close_received:
            reasons.append(f"close: the server started the closing handshake ({close_desc}); "
                           "the case expects to start it itself")
        elif ec["closedByMe"] and obs.dropped_by_me:
            reasons.append(f"close: no closing handshake, we dropped the TCP connection: "
                           f"{obs.drop_reason}")
        elif ec["closedByMe"]:
            reasons.append("close: the server dropped the TCP connection without a close "
                           "frame; the case expects to start the closing handshake itself")
        else:
            reasons.append(f"close: the server did not fail the connection (expected close "
                           f"{'/'.join(map(str, ec['closeCode']))}, 'fail fast'); we closed "
                           f"first ({close_desc})")
    elif ec["requireClean"] and not obs.was_clean:
        why = obs.drop_reason or "the server closed TCP without completing the closing handshake"
        reasons.append(f"close: not clean ({why})")
    elif got_code is not None and got_code not in ec["closeCode"]:
        reasons.append(f"close: code {got_code}, expected "
                       f"{' or '.join(map(str, ec['closeCode']))} (or none)")
    elif obs.dropped_by_me:
        reasons.append(f"close: we had to drop the TCP connection: {obs.drop_reason} "
                       f"({close_desc})")

    if obs.informational:
        return INFO, [f"informational: {INFORMATIONAL.get(obs.case_id, '')}"] + [
            "observed: " + r for r in reasons]
    if reasons:
        return FAILED, reasons
    return behavior or FAILED, []


# --- running one case ------------------------------------------------------------------------

@dataclasses.dataclass
class CaseResult:
    case_id: str
    group: int
    verdict: str
    reasons: list[str]
    duration_ms: int
    description: str
    expectation: str
    key: str | None = None
    tx_frames: int = 0
    rx_frames: int = 0
    sent: list[str] = dataclasses.field(default_factory=list)
    received: list[str] = dataclasses.field(default_factory=list)
    close: dict[str, Any] = dataclasses.field(default_factory=dict)
    case_file_verdict: dict[str, Any] | None = None


def _normalize(case_id: str, events: list[tuple]) -> list[tuple]:
    out = []
    for e in events:
        if e[0] == "message":
            out.append(("message", wire_bytes(case_id, e[1]), bool(e[2])))
        elif e[0] in ("ping", "pong"):
            out.append((e[0], wire_bytes(case_id, e[1])))
        else:
            out.append(tuple(e))
    return out


def _case_file_verdict(case: Any, conn: _Client) -> dict[str, Any]:
    """What the case file's own ``onConnectionLost`` concludes from our observations:
    reported next to our verdict as a cross-check, never used for it."""
    try:
        case.onConnectionLost(conn.failedByMe)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"behavior": case.behavior, "behaviorClose": case.behaviorClose}


async def run_case(spec: CaseSpec, host: str, port: int, path: str, limit: float) -> CaseResult:
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    conn = _Client(spec, host, port, path)
    case = spec.cls(conn)
    case.compare = lambda a, b: _normalize(spec.case_id, a) == _normalize(spec.case_id, b)
    conn.case = case
    timed_out = None
    try:
        await asyncio.wait_for(loop.create_connection(lambda: conn, host, port),
                               OPEN_HANDSHAKE_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as exc:
        conn.handshake_error = f"cannot connect to {host}:{port}: {exc!r}"
        if not conn.done.done():
            conn.done.set_result(None)
    try:
        await asyncio.wait_for(asyncio.shield(conn.done), limit)
    except asyncio.TimeoutError:
        timed_out = f"harness timeout: the case was still running after {limit:g} s"
        conn._drop("harness timeout")
        try:
            await asyncio.wait_for(conn.done, 5)
        except asyncio.TimeoutError:
            pass
    if conn._writer is not None:
        conn._writer.cancel()

    opened = conn.connectionWasOpen  # else onOpen never ran: the case set no expectations
    if spec.group == 9:  # no expected events in the case file: the echo must be exact
        if case.expected:
            conn.harness_errors.append("group 9 case with its own expected events")
        expected = {OK: [("message", m, b) for m, b in conn.sent_messages]}
        observed = list(conn.events)
    else:
        if opened and not case.expected:
            conn.harness_errors.append("the case set no expected events")
        expected = {k: _normalize(spec.case_id, v) for k, v in case.expected.items()}
        observed = _normalize(spec.case_id, case.received)
    expected_close = case.expectedClose or {"closedByMe": True, "closeCode": [1000],
                                            "requireClean": True}
    if opened and not case.expectedClose:
        conn.harness_errors.append("the case set no expected close behaviour")

    # Self-check of the octets (module docstring (a)): a case expecting the echo of a text
    # message must have sent valid UTF-8. (The cases expecting 1007 are checked before
    # the run, by _self_check, or send bytes literals.)
    for e in expected.get(OK, []) if opened else []:
        if e[0] == "message" and not e[2] and not utf8_state(e[1], True):
            conn.harness_errors.append("expects the echo of text that is not valid UTF-8")

    obs = Observation(
        case_id=spec.case_id, expected=expected, expected_close=expected_close,
        events=observed, handshake_error=conn.handshake_error, violations=conn.violations,
        harness_errors=conn.harness_errors, timed_out=timed_out,
        closed_by_me=conn.closedByMe, was_clean=conn.wasClean,
        remote_close_received=conn.remote_close_received,
        remote_close_code=conn.remoteCloseCode, dropped_by_me=conn.droppedByMe,
        drop_reason=conn.drop_reason, informational=spec.case_id in INFORMATIONAL)
    verdict, reasons = judge(obs)
    cross = _case_file_verdict(case, conn) if conn.connectionWasOpen else None
    return CaseResult(
        case_id=spec.case_id, group=spec.group, verdict=verdict, reasons=reasons,
        duration_ms=int((time.monotonic() - t0) * 1000), description=spec.description,
        expectation=spec.expectation, key=conn.key, tx_frames=conn.tx_frames,
        rx_frames=conn.rx_frames, sent=conn.tx_log, received=conn.rx_log,
        close={"closed_by_me": conn.closedByMe, "was_clean": conn.wasClean,
               "remote_close_received": conn.remote_close_received,
               "remote_close_code": conn.remoteCloseCode,
               "remote_close_reason": (conn.remoteCloseReason or b"").decode("utf-8", "replace"),
               "local_close_code": conn.localCloseCode,
               "dropped_by_me": conn.droppedByMe, "drop_reason": conn.drop_reason,
               "tcp_closed_by": conn.tcp_closed_by},
        case_file_verdict=cross)


# --- the server process --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """The server under test, started from a command line with ``{port}`` in it."""

    def __init__(self, cmd: str, cwd: str | None) -> None:
        self.port = free_port()
        self.argv = shlex.split(cmd.replace("{port}", str(self.port)))
        self.log = tempfile.NamedTemporaryFile(prefix="autobahn-server-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd,
                                     start_new_session=True)

    def wait_ready(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"server exited with status {self.proc.returncode} before listening"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return None
            except OSError:
                time.sleep(0.1)
        return f"server not accepting connections on 127.0.0.1:{self.port} after {timeout:g} s"

    def exited(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def remove_log(self) -> None:
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def stop(self) -> int | None:
        """SIGTERM to the process group we created, SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, SERVER_STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        return self.proc.returncode


# --- the run -------------------------------------------------------------------------------

def summarize(results: list[CaseResult]) -> dict[int, dict[str, int]]:
    table: dict[int, dict[str, int]] = {}
    for r in results:
        row = table.setdefault(r.group, {"cases": 0, **{v: 0 for v in VERDICTS}})
        row["cases"] += 1
        row[r.verdict] += 1
    return dict(sorted(table.items()))


def render_text(results: list[CaseResult], target: str, seconds: float) -> str:
    table = summarize(results)
    cols = ("cases", OK, NON_STRICT, INFO, UNIMPLEMENTED, FAILED)
    lines = [f"Autobahn|Testsuite against: {target}",
             f"{'group':>5} " + " ".join(f"{c:>13}" for c in cols)]
    total = {c: 0 for c in cols}
    for group, row in table.items():
        lines.append(f"{group:>5} " + " ".join(f"{row[c]:>13}" for c in cols))
        for c in cols:
            total[c] += row[c]
    lines.append(f"{'all':>5} " + " ".join(f"{total[c]:>13}" for c in cols))
    lines.append(f"{len(results)} cases in {seconds:.1f} s")
    for label in (FAILED, NON_STRICT, INFO):
        chosen = [r for r in results if r.verdict == label]
        if chosen:
            lines.append(f"\n{label} ({len(chosen)}):")
            for r in chosen:
                lines.append(f"  {r.case_id}: {r.description}")
                lines += [f"      - {why}" for why in r.reasons]
                if label == FAILED and r.key:
                    lines.append(f"      sent: {_frames_line(r.sent, r.tx_frames)}")
                    lines.append(f"      got:  {_frames_line(r.received, r.rx_frames)}; "
                                 f"TCP closed by {r.close.get('tcp_closed_by')}")
    disagree = [r for r in results if _case_file_disagrees(r)]
    if disagree:
        lines.append(f"\nnote: the case files' own verdict logic disagrees on {len(disagree)} "
                     f"case(s): {', '.join(r.case_id for r in disagree[:20])}"
                     + (" ..." if len(disagree) > 20 else ""))
    return "\n".join(lines)


def _frames_line(log: list[str], count: int) -> str:
    """First three frames, the count, the last one: what went over the wire, briefly."""
    texts = [" ".join(entry.split()[1:]) for entry in log]
    if not texts:
        return "no frames"
    if count <= 4:
        return "; ".join(texts)
    return "; ".join(texts[:3]) + f"; ... ({count} frames) ...; " + texts[-1]


def _case_file_disagrees(r: CaseResult) -> bool:
    cf = r.case_file_verdict
    if not cf or "error" in cf:
        return False
    theirs_ok = (cf["behavior"] in (OK, NON_STRICT, INFO, UNIMPLEMENTED)
                 and cf["behaviorClose"] in (OK, INFO))
    return theirs_ok != (r.verdict != FAILED)


def render_markdown(results: list[CaseResult], target: str, seconds: float) -> str:
    table = summarize(results)
    cols = ("cases", OK, NON_STRICT, INFO, UNIMPLEMENTED, FAILED)
    out = [f"# Autobahn|Testsuite: `{target}`", "",
           f"{len(results)} cases in {seconds:.1f} s.", "",
           "| group | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for group, row in table.items():
        out.append(f"| {group} | " + " | ".join(str(row[c]) for c in cols) + " |")
    failed = [r for r in results if r.verdict == FAILED]
    if failed:
        out += ["", "## FAILED", ""]
        for r in failed:
            out.append(f"- **{r.case_id}** {r.description}")
            out += [f"  - {why}" for why in r.reasons]
            if r.key:
                out.append(f"  - sent: `{_frames_line(r.sent, r.tx_frames)}`")
                out.append(f"  - received: `{_frames_line(r.received, r.rx_frames)}`; "
                           f"TCP closed by {r.close.get('tcp_closed_by')}")
    return "\n".join(out) + "\n"


async def run_all(specs: list[CaseSpec], host: str, port: int, path: str, case_timeout: float,
                  run_timeout: float, server: ServerProcess | None,
                  progress: Callable[[CaseResult], None]) -> list[CaseResult]:
    deadline = time.monotonic() + run_timeout
    results: list[CaseResult] = []
    for spec in specs:
        remaining = deadline - time.monotonic()
        stopped = server.exited() if server is not None else None
        if remaining <= 1 or stopped is not None:
            why = (f"not run: the server process exited (status {stopped})" if stopped is not None
                   else f"not run: the whole-run timeout ({run_timeout:g} s) was reached")
            results.append(CaseResult(spec.case_id, spec.group, FAILED, [why], 0,
                                      spec.description, spec.expectation))
            continue
        result = await run_case(spec, host, port, path, min(case_timeout, remaining))
        results.append(result)
        progress(result)
    return results


def main(argv: list[str] | None = None) -> int:
    global TIME_SCALE
    ap = argparse.ArgumentParser(prog="python -m tests.conformance.autobahn",
                                 description=__doc__.split("\n")[0])
    target = ap.add_mutually_exclusive_group(required=False)
    target.add_argument("--cmd", help="server command line; {port} is replaced by a free port")
    target.add_argument("--connect", metavar="HOST:PORT", help="an already running server")
    ap.add_argument("--cases", default=",".join(map(str, GROUPS)),
                    help="comma-separated groups or case-id prefixes (default: %(default)s)")
    ap.add_argument("--path", default="/", help="request path (default: /)")
    ap.add_argument("--case-timeout", type=float, default=DEFAULT_CASE_TIMEOUT)
    ap.add_argument("--run-timeout", type=float, default=DEFAULT_RUN_TIMEOUT)
    ap.add_argument("--time-scale", type=float, default=TIME_SCALE,
                    help="multiply the close/kill/continue timers (default: 1, Autobahn's)")
    ap.add_argument("--cwd", default=None, help="working directory for --cmd")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--markdown", metavar="FILE")
    ap.add_argument("--list", action="store_true", help="print the selected case ids as JSON")
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-case progress lines")
    args = ap.parse_args(argv)
    TIME_SCALE = args.time_scale

    try:
        specs = load_cases()
    except Exception as exc:
        print(f"error: cannot load the Autobahn case files from kosoku: {exc!r}", file=sys.stderr)
        return 2
    patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
    chosen = select(specs, patterns)
    counts = collections.Counter(s.group for s in specs)
    if dict(sorted(counts.items())) != EXPECTED_CASES:
        print(f"error: case count per group {dict(counts)} differs from {EXPECTED_CASES}",
              file=sys.stderr)
        return 2
    if args.list:
        print(json.dumps({"cases": [s.case_id for s in chosen],
                          "per_group": dict(collections.Counter(s.group for s in chosen)),
                          "self_check": _self_check(specs)}))
        return 0
    if not chosen:
        print(f"error: no case matches {args.cases!r}", file=sys.stderr)
        return 2
    problems = _self_check(chosen)
    if problems:
        print("error: the case data fails the self-check:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 2
    if not args.cmd and not args.connect:
        ap.error("one of --cmd or --connect is required")

    server = None
    if args.cmd:
        server = ServerProcess(args.cmd, args.cwd)
        error = server.wait_ready(SERVER_START_TIMEOUT)
        if error:
            server.stop()
            print(f"error: {error}\n--- server output ---\n{server.log_tail()}", file=sys.stderr)
            server.remove_log()
            return 2
        host, port, target_desc = "127.0.0.1", server.port, " ".join(server.argv)
    else:
        host, _, p = args.connect.rpartition(":")
        host, port, target_desc = host or "127.0.0.1", int(p), args.connect

    def progress(r: CaseResult) -> None:
        if not args.quiet:
            print(f"{r.case_id:>8} {r.verdict:<13} {r.duration_ms:>6} ms"
                  + (f"  {r.reasons[0]}" if r.verdict == FAILED and r.reasons else ""),
                  flush=True)

    t0 = time.monotonic()
    try:
        results = asyncio.run(run_all(chosen, host, port, args.path, args.case_timeout,
                                      args.run_timeout, server, progress))
    finally:
        status = server.stop() if server is not None else None
    seconds = time.monotonic() - t0

    keys = [r.key for r in results if r.key]
    if len(set(keys)) != len(keys):  # (c): a fresh key on every connection
        print("error: a Sec-WebSocket-Key was reused", file=sys.stderr)
        if server is not None:
            server.remove_log()
        return 2
    text = render_text(results, target_desc, seconds)
    print("\n" + text)
    if server is not None and any(r.verdict == FAILED for r in results):
        print(f"\n--- server output (exit status {status}) ---\n{server.log_tail()}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "target": target_desc, "seconds": round(seconds, 2), "cases_selected": patterns,
            "expected_per_group": EXPECTED_CASES,
            "summary": {str(g): row for g, row in summarize(results).items()},
            "results": [dataclasses.asdict(r) for r in results]}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(results, target_desc, seconds))
    if server is not None:
        server.remove_log()
    return 1 if any(r.verdict == FAILED for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
