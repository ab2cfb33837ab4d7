"""fastrpc._core: the compiled connection core. It owns bytes and nothing else.

Three parts, all sans-I/O in this module's Python surface:

* ``BufferPool``: fixed-size blocks in size classes under a hard byte ceiling.
* ``FrameParser`` and the ``encode_*`` functions: the RFC 6455 §5 frame codec.
* ``ConnTable``: connection slots in C arrays, per-IP counts, the idle scan.

No asyncio and no JSON in here. Blocks are named by integer *handles*, never by
pointers, so a slot stores 4 bytes per borrowed block and a bad handle is caught.
"""
from typing import Final, Sequence

Buffer = bytes | bytearray | memoryview

# Opcodes (RFC 6455 §5.2)
OP_CONTINUATION: Final[int]  # 0x0
OP_TEXT: Final[int]  # 0x1
OP_BINARY: Final[int]  # 0x2
OP_CLOSE: Final[int]  # 0x8
OP_PING: Final[int]  # 0x9
OP_PONG: Final[int]  # 0xA

DEFAULT_SIZE_CLASSES: Final[tuple[int, ...]]  # (1 KiB, 8 KiB, 64 KiB, 1 MiB)
DEFAULT_POOL_LIMIT: Final[int]  # 64 MiB
DEFAULT_ARENA_SIZE: Final[int]  # 256 KiB
DEFAULT_MAX_MESSAGE_SIZE: Final[int]  # 1 MiB
DEFAULT_MAX_FRAGMENTS: Final[int]  # 1024
MAX_CLASSES: Final[int]  # 8
SLOT_SIZE: Final[int]  # bytes of C memory one connection-table slot uses
FRAME_STATE_SIZE: Final[int]  # bytes of parser state inside one slot

class BufferPool:
    """Fixed-size blocks in a few size classes, carved from arenas reserved lazily.

    ``acquire`` and ``release`` are O(1) and allocate no Python objects at the C
    level; this Python surface exists for tests, stats and the Python layer.
    Arenas are reserved only when a class has no free block, and never past
    ``limit`` bytes in total: the pool does not grow past its ceiling.
    """

    def __init__(
        self,
        size_classes: Sequence[int] = ...,
        limit: int = ...,
        arena_size: int = ...,
    ) -> None:
        """``size_classes``: strictly increasing block sizes in bytes, each a multiple
        of 16, at most 8 classes. ``limit``: hard ceiling on bytes reserved for arenas.
        ``arena_size``: bytes reserved at a time for a class (a class whose block is
        larger reserves one block at a time)."""
    @property
    def size_classes(self) -> tuple[int, ...]: ...
    @property
    def limit(self) -> int: ...
    @property
    def bytes_reserved(self) -> int:
        """Bytes of arenas currently reserved (mmap'd; trim() unmaps the idle ones), all classes."""
    @property
    def bytes_in_use(self) -> int:
        """Bytes of blocks currently handed out (block size, not bytes written)."""
    @property
    def high_water(self) -> int:
        """Largest ``bytes_in_use`` seen since creation."""
    @property
    def failed_acquires(self) -> int:
        """Acquires refused because the ceiling was reached."""
    def acquire(self, size: int) -> int:
        """Borrow a block of the smallest class holding ``size`` bytes; returns its handle.

        Raises ``PoolExhausted`` when the ceiling is reached (counted in
        ``failed_acquires``) and ``ValueError`` when ``size`` exceeds the largest class.
        """
    def release(self, handle: int) -> None:
        """Return a block. Raises ``InvalidBlock`` for a handle released twice or
        one this pool never handed out."""
    def block_size(self, handle: int) -> int:
        """Capacity in bytes of the block behind a live handle."""
    def write(self, handle: int, offset: int, data: Buffer) -> None:
        """Copy ``data`` into the block at ``offset`` (bounds-checked; tests and tools)."""
    def read(self, handle: int, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes out of the block at ``offset`` (bounds-checked)."""
    def trim(self) -> int:
        """Free every arena none of whose blocks is in use; returns bytes freed.
        O(blocks reserved): call it from housekeeping, never per message."""
    def stats(self) -> dict[str, object]:
        """``bytes_reserved``, ``bytes_in_use``, ``high_water``, ``failed_acquires``,
        ``limit``, ``size_classes``, ``blocks_in_use`` (a tuple, one per class) and
        ``classes``: per size class a dict of ``block_size``, ``blocks_total`` (blocks
        in the arenas reserved now), ``blocks_in_use``, ``arenas``, ``bytes_reserved``
        and ``overhead_bytes`` (outside the blocks: one state byte per block, and the
        class's arena pointer and use-count arrays)."""

class FrameParser:
    """Incremental RFC 6455 frame parser for one connection: bytes in, events out.

    ``feed`` accepts input split at any byte boundary. Complete frames are parsed
    and unmasked straight from the caller's buffer; only a partial frame or a
    fragmented message borrows a block from ``pool``, and returns it the moment the
    message completes, or on ``close()``. The state is a small C struct, the same
    one a connection-table slot holds.

    Events are ``(opcode, payload)`` tuples, payload always ``bytes`` owned by the
    caller:

    * ``OP_TEXT``: a whole text message, already validated as UTF-8 (as bytes, so it
      can go straight to a JSON decoder);
    * ``OP_BINARY``: a whole binary message;
    * ``OP_PING`` / ``OP_PONG``: the control payload (≤ 125 bytes);
    * ``OP_CLOSE``: the raw close payload, already validated (empty, or a valid
      code plus UTF-8 reason); ``parse_close`` splits it.

    Errors raise ``ProtocolError(code, reason)`` carrying the close code to send
    (1002, 1007, 1009, 1013). The events completed before the error in the same
    ``feed`` call are in ``ProtocolError.events``. After an error the parser
    is dead: every later ``feed`` raises the same error. A ``feed`` after a close
    frame raises ``ProtocolError(1002, ...)``; after an error or close the caller
    must not keep reading.
    """

    def __init__(
        self,
        pool: BufferPool,
        *,
        client: bool = False,
        max_message_size: int = ...,
        max_fragments: int = ...,
    ) -> None:
        """``client=False`` (server role): every frame must be masked.
        ``client=True``: every frame must be unmasked.
        ``max_message_size``: bytes of one message, all fragments together; checked
        from each frame's length field before any payload is buffered (→ 1009).
        ``max_fragments``: frames in one data message (→ 1009)."""
    def feed(self, data: Buffer) -> list[tuple[int, bytes]]:
        """Parse ``data`` and return the events it completed, in order."""
    @property
    def buffered(self) -> int:
        """Bytes of pooled blocks this parser holds now (0 between messages)."""
    @property
    def frames(self) -> int:
        """Frame headers read and accepted so far (data, continuation and control)."""
    @property
    def closed(self) -> bool:
        """True once a close frame was parsed or an error raised."""
    def close(self) -> None:
        """Return every block this parser holds. Idempotent; ``__dealloc__`` does it too."""

def _mask_keys_left() -> int:
    """Client mask keys left in this process's buffer (a forked child starts with 0)."""

def encode_frame(
    opcode: int,
    payload: Buffer = b"",
    *,
    fin: bool = True,
    mask: bool = False,
    rsv: int = 0,
) -> bytes:
    """One frame, header and payload in one buffer. ``mask=True`` (client role) masks
    with a key from the OS's strong random source, drawn in batches. ``rsv`` sets the
    RSV1-3 bits (0-7): only for tests of peers that must reject them."""

def encode_close(code: int | None = 1000, reason: str | bytes = b"", *, mask: bool = False) -> bytes:
    """A close frame. ``code=None`` sends an empty payload. Raises ``ValueError`` for
    a code that may not be sent or a payload over 125 bytes."""

def encode_ping(payload: Buffer = b"", *, mask: bool = False) -> bytes: ...
def encode_pong(payload: Buffer = b"", *, mask: bool = False) -> bytes: ...
def apply_mask(data: Buffer, mask: Buffer) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3), on machine words."""

def validate_utf8(data: Buffer) -> bool:
    """True when ``data`` is well-formed UTF-8 (no surrogates, no overlongs)."""

def is_valid_close_code(code: int) -> bool:
    """True for a code a peer may put on the wire (RFC 6455 §7.4)."""

def parse_close(payload: Buffer) -> tuple[int, str]:
    """Split a validated close payload: ``(1005, "")`` for an empty one."""

def monotonic_ms() -> int:
    """The clock the table uses: CLOCK_MONOTONIC in milliseconds, as a uint32
    (wraps every 49.7 days; every comparison is wrap-safe)."""

class ConnTable:
    """Fixed-capacity connection slots in C arrays; O(1) add and remove through a
    free list; never a Python object per connection.

    Connection ids are ``generation << 32 | slot``: a slot reused by a new client
    gets a new generation, so a stale id never reaches the new client (``KeyError``).
    Per-IP counts are kept in an open-addressing table (IPv4 and IPv6 addresses are
    keyed by their 16-byte form) with a cap check on ``add``.
    """

    def __init__(self, capacity: int, max_per_ip: int = 256, pool: BufferPool | None = None) -> None:
        """``pool``: where slots borrow blocks (a default pool when None). Slots are
        calloc'd: pages of slots never used cost no RSS."""
    @property
    def capacity(self) -> int: ...
    @property
    def pool(self) -> BufferPool: ...
    @property
    def max_per_ip(self) -> int: ...
    def __len__(self) -> int:
        """Connections in the table."""
    def add(self, fd: int, ip: str | bytes, port: int = 0, now: int | None = None) -> int:
        """Take a free slot for ``fd`` from ``ip`` (text, or packed 4 or 16 bytes);
        returns the connection id. Raises ``TableFull`` or ``PerIPLimitExceeded``;
        then nothing changed. ``now`` defaults to ``monotonic_ms()``."""
    def remove(self, cid: int) -> int:
        """Free the slot (and any blocks its parser holds); returns the fd it held.
        Raises ``KeyError`` for a stale or unknown id."""
    def __contains__(self, cid: int) -> bool: ...
    def ip_count(self, ip: str | bytes) -> int:
        """Connections held now by ``ip``."""
    def ips(self) -> int:
        """Distinct addresses with at least one connection."""
    def memory(self) -> dict[str, int]:
        """Bytes of the table's C arrays: ``slot_size``, ``capacity``, ``slots_bytes``
        (capacity × slot_size, calloc'd: a page is resident only once one of its slots
        was used), ``slots_used_bytes`` (slots ever used × slot_size), ``slots_in_use_bytes``,
        ``ip_entries`` and ``ip_table_bytes`` (the per-IP counts, calloc'd alike),
        ``ips``."""
    def touch(self, cid: int, now: int | None = None, *, message: bool = True) -> None:
        """Record activity: any bytes received (``message=False``) or a whole message."""
    def set_inflight(self, cid: int, n: int) -> None: ...
    def info(self, cid: int) -> dict[str, object]:
        """fd, state, peer (ip text, port), last_message, last_receive, bytes and
        messages in/out, requests in flight, ping outstanding."""
    def mark_ping_sent(self, cid: int, now: int | None = None) -> None: ...

COUNTER_NAMES: Final[tuple[str, ...]]
EVENTS_ABNORMAL: Final[int]  # event_mask bits of the abnormal ends (refusals the core
                             # writes, timeouts, EOF on an open WebSocket, 1002/1007/1009/
                             # 1011/1013, slow readers, pending_overflow): the default
EVENTS_NORMAL: Final[int]    # closed_peer, closed_idle, closed_by_server

HTTP_CLOSE: Final[int]       # on_handshake/on_body action: write the response, close
HTTP_UPGRADE: Final[int]     # write the 101, switch to WebSocket (True works too)
HTTP_KEEP_ALIVE: Final[int]  # write the response, read the next request
HTTP_BODY: Final[int]        # collect a body of `response` bytes, then on_body
HTTP_DEFER: Final[int]       # answer later with respond(); the connection is not read meanwhile

class Engine:
    """The connection protocol of both roles, sans-I/O: bytes in, messages and events
    out (callbacks); messages in, bytes out (``data_to_send``); timers as one sweep
    over the slots' stamps. ``Reactor`` is this engine over real sockets.

    Roles, per connection: a *server* connection (``open_connection()`` without a
    request, or accepted by a Reactor) reads masked frames, writes unmasked ones and
    starts in the HTTP phase; a *client* connection (``open_connection(request=...)``
    or ``Reactor.connect``) writes frames masked with fresh keys, reads unmasked
    ones, and starts by sending its upgrade request and reading the 101.

    Callbacks (attributes; exceptions are caught, logged, and close the connection
    concerned with 1011, answer 500, or drop a client connection):

    * ``on_handshake(cid, head, ip, port) -> (response, action)``: a complete request
      head. ``action`` is one of ``HTTP_*`` (True/False mean upgrade/close).
    * ``on_body(cid, body) -> (response, action)``: the body asked for with
      ``HTTP_BODY``; ``action`` is ``HTTP_CLOSE``, ``HTTP_KEEP_ALIVE`` or ``HTTP_DEFER``.
    * ``on_response(cid, head) -> bool`` (client role): the server's response head;
      True opens the connection (the caller checked the 101 and its accept key).
    * ``on_text(cid, payload) -> bytes | None`` and ``on_binary``: one whole message;
      a returned value goes back as one message of the same type.
    * ``on_close(cid, code)``: an upgraded server connection or any client connection
      ended (code received, or 1006; a client that never opened gets 1006).
    * ``on_accept_paused()`` (Reactor): accept hit EMFILE/ENFILE; call ``resume_accept()``.
    * ``on_event(reason, code, detail, ip, port)``: for logs, a connection ended for a
      reason (an index into ``COUNTER_NAMES``) whose bit is set in ``event_mask``, or
      (Reactor) a socket was closed at accept (``pending_overflow``). ``code``: the
      status of a refusal the core wrote (400, 431, 500, 503), 0 for another HTTP-phase
      end, else the WebSocket close code (the one we sent, or 1006). ``detail``: the
      frame error (``"invalid UTF-8"``, ``"too many fragments"``) or ``""``. Called
      once per connection, after its slot is freed, before ``on_close``; the first
      abnormal reason wins (a normal one gives way to an abnormal one that follows).
      EOF counts only on an open WebSocket; answers Python decided (on_handshake's
      refusals) are not reported: Python logs them.
    """

    on_handshake: object
    on_body: object
    on_response: object
    on_text: object
    on_binary: object
    on_close: object
    on_accept_paused: object
    on_http_close: object
    on_event: object
    event_mask: int
    http_400: bytes
    http_431: bytes
    http_503: bytes
    http_500: bytes
    max_open: int
    max_pending: int
    max_clients: int
    max_handshake_size: int
    max_inflight: int
    write_high_water: int
    max_pending_output: int
    @property
    def table(self) -> ConnTable: ...
    @property
    def pool(self) -> BufferPool: ...
    @property
    def n_open(self) -> int:
        """Upgraded server connections."""
    @property
    def n_pending(self) -> int:
        """Server connections in the HTTP phase (handshakes, plain HTTP, keep-alive)."""
    @property
    def n_clients(self) -> int:
        """Client connections in any state."""
    @property
    def inflight_total(self) -> int: ...
    def __init__(
        self,
        pool: BufferPool,
        max_open: int,
        max_pending: int,
        max_per_ip: int = 256,
        *,
        max_message_size: int = ...,
        max_fragments: int = ...,
        max_handshake_size: int = 8192,
        max_inflight: int = 64,
        write_high_water: int = 65536,
        max_pending_output: int = 4194304,
        max_clients: int = 0,
    ) -> None: ...
    def open_connection(self, ip: str = "127.0.0.1", port: int = 0, request: Buffer | None = None) -> int:
        """Sans-I/O: add a server connection, or (with ``request``) a client one whose
        upgrade request is queued now. Raises TableFull when there is no room."""
    def receive_data(self, cid: int, data: Buffer) -> bool:
        """Sans-I/O: bytes the peer sent (any split); callbacks run from here. Then
        call ``data_to_send``. False when ``cid`` is gone."""
    def receive_eof(self, cid: int) -> bool:
        """Sans-I/O: the peer closed the connection; the slot is freed."""
    def data_to_send(self, cid: int) -> bytes:
        """Sans-I/O: every byte waiting for ``cid``. If the connection ends after them,
        ``cid`` is no longer in the engine afterwards: write them, then close."""
    def __contains__(self, cid: object) -> bool: ...
    def set_peer(self, cid: int, ip: str, port: int = 0) -> bool:
        """The real client of a connection from a trusted proxy, set in the HTTP phase
        (before admission counts the address per IP); False when too late or gone."""
    def state(self, cid: int) -> int | None:
        """The slot state (SLOT_* in _core.pxd), or None when ``cid`` is gone."""
    def admission(self, cid: int) -> int:
        """0 admitted, 1 max_open reached, 2 the peer address is at its cap."""
    def respond(self, cid: int, response: bytes, keep_alive: bool = True) -> bool:
        """The response to a request answered ``HTTP_DEFER``; with ``keep_alive`` read
        the next request (bytes already sent are parsed now), else close after it."""
    def send(self, cid: int, data: Buffer, binary: bool = False) -> bool:
        """Queue one message (masked in the client role); written at the end of the
        batch or on the next loop turn. False when the id is stale or closing."""
    def hold_sends(self) -> bool:
        """Hold sends until ``release_sends()`` writes them (one send per connection);
        False when they are held already (inside a batch): then do not release."""
    def release_sends(self) -> None:
        """Write what was sent since ``hold_sends()``."""
    def send_many(self, cids: list[int], data: Buffer, max_queued: int, binary: bool = False) -> list[int]:
        """One frame encoding, written to each server connection; returns the ids
        skipped (gone, closing, client role, or pending output would pass ``max_queued``)."""
    def begin(self, cid: int) -> None:
        """A request of ``cid`` is in flight; at max_inflight its reading pauses."""
    def end(self, cid: int) -> None: ...
    def close(self, cid: int, code: int = 1000, reason: str | bytes = b"") -> bool:
        """Start the closing handshake (the peer's close frame, or close_timeout, ends it)."""
    def abort(self, cid: int) -> bool: ...
    def peer(self, cid: int) -> tuple[str, int]: ...
    def connections(self) -> list[int]:
        """Upgraded server connections."""
    def sweep(
        self,
        handshake_timeout_ms: int = 0,
        idle_timeout_ms: int = 0,
        ping_interval_ms: int = 0,
        pong_timeout_ms: int = 0,
        close_timeout_ms: int = 5000,
        now: int | None = None,
    ) -> None:
        """One pass over the table replacing every per-connection timer. 0 disables a
        check, except ``close_timeout_ms``: 0 drops a closing connection at the next
        sweep (pass 2**32 - 1 to wait "forever"). The handshake timeout also bounds
        connects, request bodies and keep-alive waits."""
    def close_all(self, code: int = 1001, reason: str | bytes = ...) -> None: ...
    def abort_all(self) -> None: ...
    def counters_dict(self) -> dict[str, int]:
        """Every counter by its ``COUNTER_NAMES`` name (``frames_in`` / ``frames_out``
        count frames, control frames included; ``messages_*`` whole messages)."""
    def state_counts(self) -> dict[str, int]:
        """Connections per slot state (handshake, upgrading, open, closing, connecting,
        http_body, http_wait); one C pass over the slots ever used."""
    def memory(self) -> dict[str, int]:
        """``ConnTable.memory()`` plus ``flush_list_bytes`` (4 per slot of capacity)."""
    def __len__(self) -> int: ...

class Reactor(Engine):
    """The Engine over real sockets: the connection table owns every socket (accepted
    or connected) as a descriptor in its slot and in one epoll set, registered once
    with the running loop. Nothing is allocated per connection beyond its slot."""

    def fileno(self) -> int:
        """The epoll descriptor."""
    def attach(self, loop: object) -> None:
        """``loop.add_reader(epfd, ...)``: the only registration, for all connections."""
    def detach(self) -> None: ...
    @property
    def attached(self) -> bool: ...
    def add_listener(self, fd: int) -> None: ...
    def pause_accept(self) -> None: ...
    def resume_accept(self) -> None: ...
    def remove_listeners(self) -> None: ...
    @property
    def last_errno(self) -> int:
        """Inside ``on_close``: the errno of the socket error that ended the connection
        (e.g. ECONNREFUSED for a failed connect), 0 for an EOF."""
    def memory(self) -> dict[str, int]:
        """``Engine.memory()`` plus ``scratch_bytes``: the read buffer all connections share."""
    def connect(self, ip: str, port: int, request: Buffer) -> int:
        """Client role: a non-blocking connect to a numeric address; ``request`` is
        sent once connected and the response head goes to ``on_response``. Raises
        TableFull past ``max_clients``, OSError when the connect fails at once."""
