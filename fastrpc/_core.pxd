# fastrpc._core — the C-level contract. Every field states its unit and invariant.
#
# Memory rule: nothing here is allocated per connection except one `Slot` in the
# table's C array. Blocks are borrowed from the pool only while bytes must wait
# (a partial frame or message, a partial handshake head, output the socket refused).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t

cdef enum:
    MAX_CLASSES = 8            # size classes of a pool
    HANDLE_BLOCK_BITS = 13     # block index bits in a handle: <= 8192 blocks per arena
    HANDLE_ARENA_BITS = 16     # arena index bits: < 65535 arenas per class
    MAX_HEADER = 14            # longest frame header: 2 + 8 (length) + 4 (mask)

# Parser state flags (FrameState.flags)
cdef enum:
    FS_IN_PAYLOAD = 1   # the header of the current frame is parsed; `remaining` bytes to come
    FS_FAILED = 2       # an error was reported; error_code/error_reason say which
    FS_CLOSED = 4       # a close frame was parsed: any further byte is an error
    FS_MASKED = 8       # the current frame is masked with `mask_key`
    FS_FIN = 16         # the current frame has FIN set

cdef struct FrameState:
    # Per-connection RFC 6455 parser state: 52 bytes, no pointers, no Python objects.
    # Held on the C stack while a read is parsed, in a pooled block while partial.
    uint8_t hdr[MAX_HEADER]   # a header split across reads, gathered here (hdr_len bytes)
    uint8_t hdr_len           # 0 unless a header is split across reads
    uint8_t flags             # FS_* bits
    uint8_t cur_op            # opcode of the current frame (valid while FS_IN_PAYLOAD)
    uint8_t msg_op            # opcode of the data message being assembled; 0 = none open
    uint8_t mask_off          # bytes of the current frame's payload unmasked so far, mod 4
    uint8_t ctl_len           # bytes of a partial control payload in ctl_block (<= 125)
    uint8_t error_reason      # index into the reason table once FS_FAILED
    uint8_t pad0
    uint16_t error_code       # close code to send once FS_FAILED (1002, 1007, 1009, 1013)
    uint32_t fragments        # data frames of the open message parsed so far
    uint8_t mask_key[4]       # mask of the current frame
    uint32_t remaining        # payload bytes of the current frame not yet seen
    uint32_t utf8_state       # incremental UTF-8 state of the open text message (0 = accept)
    uint32_t msg_block        # pool handle assembling the open message's payload; 0 = none
    uint32_t msg_len          # bytes of payload in msg_block
    uint32_t ctl_block        # pool handle holding a partial control payload; 0 = none

cdef struct ParserConfig:
    # Shared by every connection of one server (not per connection).
    uint32_t max_message_size  # bytes of one message, all fragments (< 2 GiB)
    uint32_t max_fragments     # data frames of one message
    bint client                # True: frames from the peer must be unmasked (client role)

cdef struct PoolClass:
    uint32_t block_size        # bytes per block (multiple of 16)
    uint32_t blocks_per_arena  # <= 1 << HANDLE_BLOCK_BITS
    uint32_t arena_bytes       # block_size * blocks_per_arena
    uint32_t max_arenas        # arena slots; < 1 << HANDLE_ARENA_BITS
    uint32_t n_arenas          # arena slots ever used (arenas[i] may be NULL after trim)
    uint32_t free_head         # handle of the first free block; 0 = free list empty
    uint32_t in_use            # blocks handed out
    size_t reserved            # bytes of arenas this class holds now
    char** arenas              # max_arenas pointers; each arena ends with one state byte per block
    uint16_t* arena_used       # blocks in use per arena (trim frees arenas at 0)

cdef class BufferPool:
    cdef PoolClass classes[MAX_CLASSES]
    cdef int n_classes
    cdef readonly size_t limit            # hard ceiling on bytes_reserved
    cdef readonly size_t bytes_reserved   # arena bytes mapped now (mmap; trim() unmaps idle arenas)
    cdef readonly size_t bytes_in_use     # block bytes handed out now
    cdef readonly size_t high_water       # max bytes_in_use seen
    cdef readonly uint64_t failed_acquires
    cdef readonly size_t reserve          # bytes only the smallest class may reserve
    cdef uint32_t acquire_c(self, size_t size) noexcept
    cdef int release_c(self, uint32_t handle) noexcept
    cdef char* ptr(self, uint32_t handle) noexcept
    cdef uint32_t capacity_of(self, uint32_t handle) noexcept
    cdef uint32_t grow_c(self, uint32_t handle, uint32_t used, size_t size) noexcept
    cdef int _reserve_arena(self, int cls) noexcept
    cdef int _check(self, uint32_t handle) noexcept
    cdef dict _class_stats(self, int i)

cdef struct Parsing:
    # A parse in progress holds its connection's FrameState on the C stack; a chain of
    # them (nested parses: a callback can resume another connection) lets free_blocks()
    # give back the blocks of a state that is not in its slot while it is being parsed.
    FrameState st
    uint32_t idx              # slot index being parsed
    uint32_t gen              # its generation; 0 once the slot was freed meanwhile
    Parsing* outer

cdef class FrameParser:
    cdef FrameState st
    cdef ParserConfig cfg
    cdef BufferPool pool
    cdef readonly uint64_t frames         # frame headers read and accepted so far

# Connection slot states
cdef enum:
    SLOT_FREE = 0
    SLOT_HANDSHAKE = 1   # HTTP phase: server: collecting a request head (also between
                         # keep-alive requests); client: collecting the 101 response head
    SLOT_UPGRADING = 2   # head handed to Python, waiting for its answer
    SLOT_OPEN = 3        # WebSocket open
    SLOT_CLOSING = 4     # our close frame is queued or sent; waiting for the peer's
    SLOT_CONNECTING = 5  # client role: connect() in progress, the upgrade request waits
    SLOT_HTTP_BODY = 6   # server: collecting a request body of known length (in_block)
    SLOT_HTTP_WAIT = 7   # server: request handed to Python, its response not yet given

# Slot flags
cdef enum:
    SF_PING_SENT = 1        # a keepalive ping is outstanding since `ping_sent`
    SF_READ_PAUSED = 2      # not reading: requests in flight or pending output past a limit
    SF_REG_IN = 4           # EPOLLIN is registered for fd
    SF_REG_OUT = 8          # EPOLLOUT is registered for fd (output waits in the out chain)
    SF_CLOSE_SENT = 16      # our close frame is queued
    SF_CLOSE_RECV = 32      # the peer's close frame arrived
    SF_DIRTY = 64           # on the engine's flush list
    SF_DROP_AFTER_WRITE = 128   # end the connection once the out chain is flushed
    SF_IP_COUNTED = 256     # counted in the per-IP table (upgraded, or added by add())
    SF_LINGER = 512         # refused: answer written, then SHUT_WR; discard input until EOF
    SF_WANT_OUT = 1024      # send() would block: EPOLLOUT wanted until the out chain drains
    SF_CLIENT = 2048        # client role: frames we send are masked, frames we get are not
    SF_KEEP_ALIVE = 4096    # HTTP: a request was answered and the connection kept alive
                            # (a handshake timeout with nothing of the next one is idling)

cdef struct Slot:
    # One connection: 72 bytes of C memory, never a Python object. Parser state is not
    # here: an idle connection (no partial frame) has none; a partial one keeps its
    # FrameState in a pooled block (`pstate`).
    int32_t fd                # the client socket; -1 while free (or owned by the caller)
    uint32_t gen              # generation, bumped on every add: ids are gen << 32 | index
    uint16_t port             # peer port
    uint8_t state             # SLOT_*
    uint8_t end_reason        # why the connection is ending: a counter index (C_* in
                              # _engine.pxi) kept for on_event; 0 = none yet (see
                              # Engine._note_end for which reason wins)
    uint16_t flags            # SF_*
    uint16_t inflight         # requests handed to Python and not finished
    uint16_t close_code       # code for on_close once closing (received, or sent on
                              # failure); in SLOT_HANDSHAKE (server): request-line check
                              # progress (see Engine._check_request_line)
    uint16_t end_detail       # with end_reason: the HTTP status of a refusal the core
                              # wrote, the close code of a close we started, or the
                              # parser's error (E_* in _frames.pxi) of a failed frame
    uint8_t addr[16]          # peer address, IPv4 as ::ffff:a.b.c.d; key of the per-IP count
    uint32_t last_message     # monotonic ms of the last whole message (idle timeout);
                              # SLOT_HTTP_BODY: bytes of the body still to come
    uint32_t last_receive     # monotonic ms of the last bytes received (ping interval)
    uint32_t ping_sent        # monotonic ms the ping / close was sent, or start of the
                              # HTTP phase (accept, connect, last keep-alive response)
    uint32_t in_block         # pool handle of unparsed input: the head while
                              # SLOT_HANDSHAKE, the body while SLOT_HTTP_BODY, bytes left
                              # over while reading is paused. While the slot is free:
                              # the next free slot index (free list)
    uint32_t in_len           # bytes in in_block
    uint32_t out_head         # first block of pending output; 0 = none
    uint32_t out_tail         # last block of pending output
    uint32_t out_bytes        # bytes of pending output
    uint32_t pstate           # pool handle holding this connection's FrameState while a
                              # frame or message is partial; 0 = clean (all-zero) state

cdef struct IPEntry:
    uint8_t addr[16]          # the address (IPv4 mapped)
    uint32_t count            # connections from it; 0 = empty entry

cdef class ConnTable:
    cdef Slot* slots
    cdef readonly uint32_t capacity
    cdef readonly uint32_t count          # slots in use
    cdef readonly uint32_t high           # slots ever used: every slot >= high is untouched
    cdef readonly uint32_t max_per_ip
    cdef int32_t free_head
    cdef IPEntry* ips_tab
    cdef uint32_t ips_mask                # ips_tab has ips_mask + 1 entries (power of two)
    cdef readonly uint32_t n_ips          # distinct addresses with a connection
    cdef readonly BufferPool pool
    cdef public bint owns_fds             # close the slots' fds on dealloc (set by Reactor)
    cdef int64_t add_c(self, int fd, const uint8_t* addr16, uint16_t port, uint32_t now, bint count_ip) noexcept
    cdef int ip_admit(self, Slot* s) noexcept
    cdef Slot* get(self, uint64_t cid) noexcept
    cdef int remove_c(self, uint64_t cid) noexcept
    cdef void free_blocks(self, Slot* s) noexcept
    cdef Parsing* parsing                 # innermost parse in progress (see Engine._frames)
    cdef uint32_t ip_find(self, const uint8_t* addr16) noexcept
    cdef void _ip_dec(self, const uint8_t* addr16) noexcept
    cdef Slot* _slot(self, cid) except NULL
