# Reactor: the I/O driver. The connection table owns the client sockets; one epoll
# set, registered once with the running event loop (loop.add_reader(epfd)), drives
# them all. Per connection there is a slot and nothing else: no transport, protocol,
# task, timer or loop registration.
#
# Data flow of one readiness batch: epoll_wait → recv() into the shared scratch
# buffer → parse_next() in place → Python's on_text/on_binary per whole message →
# replies appended to the connection's out chain → one send() per connection at
# the end of the batch. Output the socket refuses waits in pooled blocks.
#
# Re-entrancy: any Python callback may send to, close or drop any connection,
# including the one being served. After every callback the slot is looked up again
# by id (generation-checked) before it is touched.

cdef extern from "sys/epoll.h" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "sys/uio.h" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "sys/socket.h" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    int accept4(int fd, sockaddr* addr, socklen_t* addrlen, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    int shutdown(int fd, int how)
    int setsockopt(int fd, int level, int optname, const void* optval, socklen_t optlen)
    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        MSG_NOSIGNAL
        SHUT_WR
        AF_INET
        AF_INET6
        SOL_SOCKET
        SO_LINGER

cdef extern from "netinet/in.h" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in6:
        unsigned short sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr
    uint16_t ntohs(uint16_t)
    enum:
        IPPROTO_TCP

cdef extern from "netinet/tcp.h" nogil:
    enum:
        TCP_NODELAY

cdef extern from "errno.h" nogil:
    enum:
        EAGAIN
        EMFILE
        ENFILE
        ENOBUFS
        ENOMEM
        ECONNABORTED

cdef struct Linger:
    int l_onoff
    int l_linger

cdef enum:
    SCRATCH_SIZE = 256 * 1024   # shared read buffer of one reactor (one event loop)
    MAX_EVENTS = 512            # readiness events taken per epoll_wait
    OUT_HDR = 12                # out block header: next handle, start, end (uint32 each)
    FLUSH_IOV = 64              # out blocks per sendmsg() (far below IOV_MAX)
    READY_ROUNDS = 4            # epoll rounds per loop callback at most (see _on_ready)
    REPOLL_MIN = 4              # ready sockets in a round that make another round worth it
    LISTENER_TAG = 0xFFFFFFFF   # epoll data of a listening socket: tag << 32 | index
    MAX_LISTENERS = 8
    READ_BUDGET = 4             # recv() calls per connection per batch before yielding

# Counter indexes (Reactor.counters); names in COUNTER_NAMES, same order.
cdef enum:
    C_ACCEPTED = 0
    C_UPGRADED
    C_REFUSED_HTTP          # handshake answered with an HTTP error or a plain HTTP reply
    C_HANDSHAKE_TOO_LARGE   # request head over max_handshake_size → 431
    C_HANDSHAKE_TIMEOUT     # request head not complete in time → dropped
    C_PENDING_OVERFLOW      # accepted while max_pending_handshakes were waiting → closed
    C_ACCEPT_PAUSED         # EMFILE/ENFILE on accept: accepting paused
    C_CLOSED_PEER           # the peer sent a close frame
    C_CLOSED_EOF            # EOF or reset without a close frame
    C_CLOSED_PROTOCOL       # frame protocol error (1002/1007)
    C_CLOSED_TOO_BIG        # 1009
    C_CLOSED_NOMEM          # 1013: pool at its ceiling
    C_CLOSED_IDLE           # idle_timeout → 1001
    C_CLOSED_PONG_TIMEOUT   # ping unanswered
    C_CLOSED_SLOW_READER    # pending output over max_pending_output
    C_CLOSED_CLOSE_TIMEOUT  # no close frame back in time
    C_CLOSED_BY_SERVER      # close() from Python (and stop())
    C_CLOSED_HANDLER_ERROR  # a message callback raised → 1011
    C_MESSAGES_IN
    C_MESSAGES_OUT
    C_BYTES_IN
    C_BYTES_OUT
    C_PINGS_SENT
    C_READ_PAUSES           # reading paused for in-flight requests or pending output
    C_WRITE_WAITS           # send() would block: EPOLLOUT armed
    C_BATCHES               # readiness batches (callbacks from the loop with events)
    C_N

COUNTER_NAMES = (
    "accepted", "upgraded", "refused_http", "handshake_too_large", "handshake_timeout",
    "pending_overflow", "accept_paused", "closed_peer", "closed_eof", "closed_protocol",
    "closed_too_big", "closed_nomem", "closed_idle", "closed_pong_timeout",
    "closed_slow_reader", "closed_close_timeout", "closed_by_server",
    "closed_handler_error", "messages_in", "messages_out", "bytes_in", "bytes_out",
    "pings_sent", "read_pauses", "write_waits", "batches",
)

cdef bytes _CRLFCRLF = b"\r\n\r\n"

_log = None


cdef inline uint64_t _cid(ConnTable t, Slot* s) noexcept:
    return (<uint64_t>s.gen << 32) | <uint64_t>(s - t.slots)


@cython.no_gc_clear  # __dealloc__ may run from the cycle collector: keep its fields
cdef class Reactor:
    """The socket-owning core of a server. Python gives it listening sockets and
    callbacks; it accepts, reads, parses, writes and times out connections itself.

    Callbacks (all optional except on_text; none may block; exceptions are caught,
    logged and turn into a 1011 close of the connection concerned):

    * ``on_handshake(cid, head: bytes, ip: str, port: int) -> (response: bytes, upgrade: bool)``
      once per socket with its complete request head. ``upgrade=True`` switches the
      connection to WebSocket after writing ``response`` (a 101); otherwise the
      response is written and the socket closed.
    * ``on_text(cid, payload: bytes) -> bytes | None`` / ``on_binary(...)``: a whole
      message; a returned value is sent back as one message of the same type.
    * ``on_close(cid, code: int)``: an upgraded connection ended (the slot is already
      free; sending to it is a no-op). ``code`` is the close code received, or 1006.
    * ``on_accept_paused()``: accept failed with EMFILE/ENFILE; call
      ``resume_accept()`` later (the server does so after a short delay).
    """
    cdef readonly ConnTable table
    cdef readonly BufferPool pool
    cdef ParserConfig cfg
    cdef int epfd
    cdef int listeners[MAX_LISTENERS]
    cdef int n_listeners
    cdef bint accept_paused
    cdef uint8_t* scratch
    cdef uint32_t* dirty
    cdef uint32_t n_dirty
    cdef bint in_batch
    cdef bint flush_scheduled
    cdef uint64_t counters[C_N]
    cdef readonly uint32_t n_open            # upgraded connections
    cdef readonly uint32_t n_pending         # sockets still in the HTTP phase
    cdef readonly uint32_t inflight_total    # requests in flight, all connections
    # limits
    cdef public uint32_t max_open
    cdef public uint32_t max_pending
    cdef public uint32_t max_handshake_size
    cdef public uint32_t max_inflight
    cdef public uint32_t write_high_water
    cdef public uint32_t max_pending_output
    cdef public object on_handshake
    cdef public object on_text
    cdef public object on_binary
    cdef public object on_close
    cdef public object on_accept_paused
    # HTTP answers the core writes itself (the server sets them from handshake.py):
    cdef public bytes http_431   # request head over max_handshake_size
    cdef public bytes http_503   # admission lost a race between Python's check and the upgrade
    cdef public bytes http_500   # on_handshake raised
    cdef object loop

    def __cinit__(self, BufferPool pool not None, uint32_t max_open, uint32_t max_pending,
                  uint32_t max_per_ip=256, *, size_t max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                  size_t max_fragments=DEFAULT_MAX_FRAGMENTS, uint32_t max_handshake_size=8192,
                  uint32_t max_inflight=64, uint32_t write_high_water=65536,
                  uint32_t max_pending_output=4 * 1024 * 1024):
        self.epfd = -1
        check_pool(pool, max_message_size)
        if max_handshake_size > pool.classes[pool.n_classes - 1].block_size:
            raise ValueError("max_handshake_size is over the pool's largest block")
        init_config(&self.cfg, False, max_message_size, max_fragments)
        self.pool = pool
        self.table = ConnTable(max_open + max_pending, max_per_ip, pool)
        self.table.owns_fds = True  # the table's slots hold this reactor's sockets
        self.max_open = max_open
        self.max_pending = max_pending
        self.max_handshake_size = max_handshake_size
        self.max_inflight = max_inflight
        self.write_high_water = write_high_water
        self.max_pending_output = max_pending_output
        self.scratch = <uint8_t*>malloc(SCRATCH_SIZE)
        self.dirty = <uint32_t*>malloc(sizeof(uint32_t) * (max_open + max_pending))
        if self.scratch == NULL or self.dirty == NULL:
            raise MemoryError()
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        self.http_431 = _HTTP_431
        self.http_503 = _HTTP_503
        self.http_500 = _HTTP_500

    def __dealloc__(self):
        free(self.scratch)
        free(self.dirty)
        if self.epfd >= 0:
            close(self.epfd)

    # --- wiring to the event loop -------------------------------------------------

    def fileno(self):
        return self.epfd

    def attach(self, loop):
        """Register the epoll descriptor with `loop` (asyncio or uvloop)."""
        self.loop = loop
        loop.add_reader(self.epfd, self._on_ready)

    def detach(self):
        if self.loop is not None:
            self.loop.remove_reader(self.epfd)
            self.loop = None

    def add_listener(self, int fd):
        """Accept connections from listening socket `fd` (non-blocking; the caller keeps it open)."""
        cdef epoll_event ev
        if self.n_listeners >= MAX_LISTENERS:
            raise ValueError("too many listening sockets")
        ev.events = EPOLLIN
        ev.data.u64 = (<uint64_t>LISTENER_TAG << 32) | <uint64_t>self.n_listeners
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            raise OSError(errno, "epoll_ctl on the listening socket failed")
        self.listeners[self.n_listeners] = fd
        self.n_listeners += 1

    def pause_accept(self):
        """Stop accepting (stop() and EMFILE). Connections already open carry on."""
        self._pause_accept_c()

    def resume_accept(self):
        cdef int i
        cdef epoll_event ev
        if self.accept_paused:
            for i in range(self.n_listeners):
                ev.events = EPOLLIN
                ev.data.u64 = (<uint64_t>LISTENER_TAG << 32) | <uint64_t>i
                epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.listeners[i], &ev)
            self.accept_paused = False

    def remove_listeners(self):
        self.pause_accept()
        self.n_listeners = 0

    # --- the readiness callback ---------------------------------------------------

    def _on_ready(self):
        """Called by the loop when the epoll set is readable. Never raises.

        Up to READY_ROUNDS rounds per call: while a round found at least REPOLL_MIN
        ready sockets (a busy server), poll again at once instead of going back
        through the loop's own select (which costs more in Python than a round of
        epoll_wait). Each round's replies are flushed before the next poll, and the
        rounds are bounded, so other tasks wait at most a few batches."""
        cdef epoll_event events[MAX_EVENTS]
        cdef int n, i, rounds = 0
        cdef uint64_t tag
        cdef uint32_t now
        cdef Slot* s
        while rounds < READY_ROUNDS:
            n = epoll_wait(self.epfd, events, MAX_EVENTS, 0)
            if n <= 0:
                return
            rounds += 1
            now = monotonic_ms_c()
            self.counters[C_BATCHES] += 1
            self.in_batch = True
            try:
                for i in range(n):
                    tag = events[i].data.u64
                    if (tag >> 32) == LISTENER_TAG:
                        self._accept(self.listeners[<uint32_t>tag], now)
                        continue
                    s = self.table.get(tag)
                    if s == NULL:
                        continue  # dropped earlier in this batch (maybe reused: generation differs)
                    if events[i].events & EPOLLOUT:
                        self._flush(s, tag)
                        s = self.table.get(tag)
                        if s == NULL:
                            continue
                    if events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR):
                        if s.flags & SF_REG_IN or events[i].events & (EPOLLHUP | EPOLLERR):
                            self._read(s, tag, now)
            except BaseException:
                _log_exception("reactor batch")
            finally:
                self.in_batch = False
                self._flush_dirty()
            if n < REPOLL_MIN or self.loop is None:  # quiet, or detached by a callback
                return

    cdef void _accept(self, int lfd, uint32_t now) noexcept:
        cdef sockaddr_storage ss
        cdef socklen_t sl
        cdef int fd, one = 1, k
        cdef uint8_t a16[16]
        cdef uint16_t port
        cdef int64_t idx
        cdef epoll_event ev
        cdef Slot* s
        for k in range(256):
            sl = sizeof(ss)
            fd = accept4(lfd, <sockaddr*>&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                    # Out of descriptors: pause rather than spin on a readable listener.
                    self.counters[C_ACCEPT_PAUSED] += 1
                    self._pause_accept_c()
                    self._call(self.on_accept_paused)
                elif errno == ECONNABORTED:
                    continue
                return
            self.counters[C_ACCEPTED] += 1
            if self.n_pending >= self.max_pending or self.table.count >= self.table.capacity:
                self.counters[C_PENDING_OVERFLOW] += 1
                close(fd)
                continue
            memset(a16, 0, 16)
            port = 0
            if ss.ss_family == AF_INET:
                a16[10] = 0xFF
                a16[11] = 0xFF
                memcpy(a16 + 12, &(<sockaddr_in*>&ss).sin_addr.s_addr, 4)
                port = ntohs((<sockaddr_in*>&ss).sin_port)
            elif ss.ss_family == AF_INET6:
                memcpy(a16, (<sockaddr_in6*>&ss).sin6_addr.s6_addr, 16)
                port = ntohs((<sockaddr_in6*>&ss).sin6_port)
            idx = self.table.add_c(fd, a16, port, now, False)
            if idx < 0:
                close(fd)
                continue
            s = &self.table.slots[idx]
            s.state = SLOT_HANDSHAKE
            s.ping_sent = now  # accept time: the handshake timeout counts from here
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            ev.events = EPOLLIN | EPOLLRDHUP
            ev.data.u64 = _cid(self.table, s)
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
                self.table.remove_c(ev.data.u64)
                close(fd)
                continue
            s.flags |= SF_REG_IN
            self.n_pending += 1

    cdef void _pause_accept_c(self) noexcept:
        cdef int i
        if not self.accept_paused:
            for i in range(self.n_listeners):
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, self.listeners[i], NULL)
            self.accept_paused = True

    # --- reading ----------------------------------------------------------------

    cdef void _read(self, Slot* s, uint64_t cid, uint32_t now) noexcept:
        cdef ssize_t got
        cdef int rounds
        for rounds in range(READ_BUDGET):
            got = recv(s.fd, self.scratch, SCRATCH_SIZE, 0)
            if got < 0:
                if errno == EAGAIN or errno == EINTR:
                    return
                self._drop(s, cid, 1006, C_CLOSED_EOF)
                return
            if got == 0:
                self._drop(s, cid, 1006, C_CLOSED_EOF)
                return
            s.bytes_in += got
            self.counters[C_BYTES_IN] += got
            s.last_receive = now
            s.flags &= ~SF_PING_SENT
            if s.flags & SF_LINGER:
                continue  # refused: discard until the peer's EOF
            if s.state == SLOT_HANDSHAKE:
                if self._handshake_bytes(s, cid, self.scratch, got, now) < 0:
                    return
            elif self._frames(s, cid, self.scratch, got, now) < 0:
                return
            s = self.table.get(cid)
            if s == NULL or not (s.flags & SF_REG_IN) or got < SCRATCH_SIZE:
                return

    cdef int _handshake_bytes(self, Slot* s, uint64_t cid, const uint8_t* data, size_t n,
                              uint32_t now) noexcept:
        """Gather the request head; at its end hand it to Python. Returns -1 when the
        slot is gone or must not be read further in this batch."""
        cdef uint32_t old = s.in_len
        cdef uint32_t nh
        cdef size_t start, head_len, rest
        cdef const uint8_t* p
        cdef const uint8_t* hit
        if old + n > self.max_handshake_size:
            # Never buffer past the limit: answer 431 from the bytes we have.
            self.counters[C_HANDSHAKE_TOO_LARGE] += 1
            self._refuse(s, cid, self.http_431)
            return -1
        nh = self.pool.grow_c(s.in_block, s.in_len, old + n)
        if nh == 0:
            self._drop(s, cid, 1006, C_CLOSED_NOMEM)
            return -1
        s.in_block = nh
        memcpy(self.pool.ptr(nh) + old, data, n)
        s.in_len = old + n
        p = <const uint8_t*>self.pool.ptr(nh)
        start = old - 3 if old >= 3 else 0
        hit = <const uint8_t*>memmem(p + start, s.in_len - start, b"\r\n\r\n", 4)
        if hit == NULL:
            return 0
        head_len = (hit - p) + 4
        head = PyBytes_FromStringAndSize(<const char*>p, head_len)
        rest = s.in_len - head_len
        leftover = PyBytes_FromStringAndSize(<const char*>p + head_len, rest) if rest else None
        self.pool.release_c(s.in_block)
        s.in_block = 0
        s.in_len = 0
        s.state = SLOT_UPGRADING
        return self._upgrade(cid, head, leftover, now)

    cdef int _upgrade(self, uint64_t cid, bytes head, object leftover, uint32_t now) noexcept:
        cdef Slot* s
        cdef Py_buffer buf
        try:
            s = self.table.get(cid)
            ip = addr_text(s.addr)
            response, upgrade = self.on_handshake(cid, head, ip, s.port)
            s = self.table.get(cid)
            if s == NULL:
                return -1
            if not upgrade:
                self.counters[C_REFUSED_HTTP] += 1
                self._refuse(s, cid, response)
                return -1
            # Admission is decided by Python before it answers 101 (admission()), so
            # the per-IP count cannot be over the cap here; check anyway.
            if self.table.ip_admit(s) < 0 or self.n_open >= self.max_open:
                self._refuse(s, cid, self.http_503)
                return -1
            if self._queue(s, cid, <const uint8_t*>PyBytes_AS_STRING(response), len(response)) < 0:
                return -1
            s.state = SLOT_OPEN
            self.n_pending -= 1
            self.n_open += 1
            s.last_message = now
            s.last_receive = now
            self.counters[C_UPGRADED] += 1
            if leftover is not None:
                # A client that did not wait for the 101 before its first frames.
                PyObject_GetBuffer(leftover, &buf, PyBUF_SIMPLE)
                try:
                    return self._frames(s, cid, <const uint8_t*>buf.buf, buf.len, now)
                finally:
                    PyBuffer_Release(&buf)
            return 0
        except BaseException:
            _log_exception("on_handshake")
            s = self.table.get(cid)
            if s != NULL:
                self._refuse(s, cid, self.http_500)
            return -1

    def admission(self, cid):
        """What an upgrade of `cid` would meet now: 0 admitted, 1 max_connections
        reached, 2 its address holds max_connections_per_ip."""
        cdef Slot* s = self.table._slot(cid)
        if self.n_open >= self.max_open:
            return 1
        if self.table.ips_tab[self.table.ip_find(s.addr)].count >= self.table.max_per_ip:
            return 2
        return 0

    cdef void _refuse(self, Slot* s, uint64_t cid, bytes response) noexcept:
        """Write an HTTP answer, then half-close and discard input until EOF (so the
        peer reads the answer instead of a reset), bounded by the close timeout."""
        if s.state == SLOT_HANDSHAKE or s.state == SLOT_UPGRADING:
            self.n_pending -= 1
        s.state = SLOT_CLOSING
        s.ping_sent = monotonic_ms_c()
        s.flags |= SF_DROP_AFTER_WRITE | SF_LINGER
        release_parser_blocks(&s.parser, self.pool)
        if s.in_block:
            self.pool.release_c(s.in_block)
            s.in_block = 0
            s.in_len = 0
        self._queue(s, cid, <const uint8_t*>PyBytes_AS_STRING(response), len(response))

    cdef int _frames(self, Slot* s, uint64_t cid, const uint8_t* data, size_t n,
                     uint32_t now) noexcept:
        """Parse frames from data[:n] and deliver them. Returns -1 when the slot is
        gone or reading must stop for this batch (paused; the rest is kept)."""
        cdef size_t pos = 0
        cdef int op
        cdef object payload, reply
        cdef uint32_t nh
        while pos < n:
            if s.flags & SF_READ_PAUSED:
                # Keep what was read but not parsed; it is parsed on resume.
                nh = self.pool.grow_c(s.in_block, s.in_len, s.in_len + (n - pos))
                if nh == 0:
                    self._fail_conn(s, cid, 1013, E_NOMEM, C_CLOSED_NOMEM)
                    return -1
                s.in_block = nh
                memcpy(self.pool.ptr(nh) + s.in_len, data + pos, n - pos)
                s.in_len += n - pos
                return -1
            try:
                payload = parse_next(&s.parser, self.pool, &self.cfg, data, n, &pos, &op)
            except BaseException:  # MemoryError creating the payload object
                _log_exception("parse")
                op = -1
                s.parser.error_code = 1011
                s.parser.error_reason = E_NOMEM
            if op == 0:
                return 0
            if op < 0:
                code = s.parser.error_code
                self._fail_conn(s, cid, code, s.parser.error_reason,
                                C_CLOSED_TOO_BIG if code == 1009 else
                                C_CLOSED_NOMEM if code == 1013 else C_CLOSED_PROTOCOL)
                return -1
            if op <= 2:
                if s.flags & SF_CLOSE_SENT:
                    continue  # closing: data after our close frame is dropped
                s.last_message = now
                s.msgs_in += 1
                self.counters[C_MESSAGES_IN] += 1
                try:
                    reply = (self.on_text if op == 1 else self.on_binary)(cid, payload)
                    s = self.table.get(cid)
                    if s == NULL:
                        return -1
                    if reply is not None:
                        self._send_frame(s, cid, op, reply)  # raises for a non-buffer reply
                        s = self.table.get(cid)
                        if s == NULL:
                            return -1
                except BaseException:
                    _log_exception("message handler")
                    s = self.table.get(cid)
                    if s != NULL:
                        self._close_c(s, cid, 1011, b"internal error", C_CLOSED_HANDLER_ERROR)
                    return -1
            elif op == 9:
                if not (s.flags & SF_CLOSE_SENT):
                    self._send_frame(s, cid, 0xA, payload)
                    s = self.table.get(cid)
                    if s == NULL:
                        return -1
            elif op == 10:
                s.flags &= ~SF_PING_SENT
            elif op == 8:
                self._peer_closed(s, cid, payload)
                return -1
        return 0

    cdef void _peer_closed(self, Slot* s, uint64_t cid, bytes payload) noexcept:
        cdef int code = 1005
        cdef int counter = -1   # a close we started was counted when we started it
        cdef uint8_t reply[2]
        if len(payload) >= 2:
            code = (payload[0] << 8) | payload[1]
        s.flags |= SF_CLOSE_RECV
        if not (s.flags & SF_CLOSE_SENT):
            # Echo the code (RFC 6455 §5.5.1), then the server closes TCP first.
            counter = C_CLOSED_PEER
            reply[0] = <uint8_t>(code >> 8)
            reply[1] = <uint8_t>code
            if self._close_frame(s, cid, reply, 0 if code == 1005 else 2) < 0:
                return
        self._finish(s, cid, code, counter)

    cdef void _fail_conn(self, Slot* s, uint64_t cid, int code, int reason, int counter) noexcept:
        """Fail the connection (RFC 6455 §7.1.7): close frame with `code`, then drop."""
        if not (s.flags & SF_CLOSE_SENT):
            if self._close_frame_reason(s, cid, code, _REASONS[reason].encode()) < 0:
                return
        self._finish(s, cid, code, counter)

    cdef void _finish(self, Slot* s, uint64_t cid, int code, int counter) noexcept:
        """Stop reading; drop once pending output is written."""
        s.flags |= SF_DROP_AFTER_WRITE
        s.state = SLOT_CLOSING
        s.ping_sent = monotonic_ms_c()
        if counter >= 0:
            self.counters[counter] += 1
        s.close_code = <uint16_t>code
        self._update_interest(s, cid)
        if s.out_bytes == 0:
            self._drop(s, cid, code, -1)
        else:
            self._mark_dirty(s)

    cdef int _close_frame_reason(self, Slot* s, uint64_t cid, int code, bytes reason) noexcept:
        cdef uint8_t body[125]
        cdef size_t n = 2 + min(len(reason), 123)
        body[0] = <uint8_t>(code >> 8)
        body[1] = <uint8_t>code
        memcpy(body + 2, PyBytes_AS_STRING(reason), n - 2)
        return self._close_frame(s, cid, body, n)

    cdef int _close_frame(self, Slot* s, uint64_t cid, const uint8_t* body, size_t n) noexcept:
        """Send a close frame. With nothing else waiting it goes straight from the
        stack, so a close (1013 above all) needs no pooled block even at the ceiling.
        Returns -1 when the connection was dropped instead (the slot is gone)."""
        cdef uint8_t frame[MAX_HEADER + 125]
        cdef size_t hl
        cdef ssize_t sent
        s.flags |= SF_CLOSE_SENT
        if s.out_head == 0:
            hl = write_header(frame, 0x88, n, NULL)
            memcpy(frame + hl, body, n)
            sent = send(s.fd, frame, hl + n, MSG_NOSIGNAL)
            if sent == <ssize_t>(hl + n):
                s.bytes_out += sent
                self.counters[C_BYTES_OUT] += sent
                return 0
            if sent > 0:
                s.bytes_out += sent
                self.counters[C_BYTES_OUT] += sent
                return self._queue(s, cid, frame + sent, hl + n - sent)
            if sent < 0 and errno != EAGAIN and errno != EINTR:
                self._drop(s, cid, 1006, C_CLOSED_EOF)
                return -1
        return self._queue_frame(s, 0x88, body, n)

    cdef void _close_c(self, Slot* s, uint64_t cid, int code, bytes reason, int counter) noexcept:
        """Start the closing handshake: send close, wait (close_timeout) for the peer's."""
        if s.state != SLOT_OPEN or (s.flags & SF_CLOSE_SENT):
            return
        self.counters[counter] += 1
        if self._close_frame_reason(s, cid, code, reason) < 0:
            return
        s.state = SLOT_CLOSING
        s.ping_sent = monotonic_ms_c()

    cdef void _drop(self, Slot* s, uint64_t cid, int code, int counter) noexcept:
        """End the connection now: free its slot and blocks, close the socket, tell Python."""
        cdef int fd = s.fd
        cdef bint was_open = s.state == SLOT_OPEN or (s.state == SLOT_CLOSING and not (s.flags & SF_LINGER))
        cdef bint pending = s.state == SLOT_HANDSHAKE or s.state == SLOT_UPGRADING
        if counter >= 0:
            self.counters[counter] += 1
        if pending:
            self.n_pending -= 1
        elif was_open:
            self.n_open -= 1
        self.inflight_total -= s.inflight
        self.table.remove_c(cid)
        close(fd)  # also leaves the epoll set
        if was_open and self.on_close is not None:
            try:
                self.on_close(cid, code)
            except BaseException:
                _log_exception("on_close")

    # --- writing ----------------------------------------------------------------

    cdef int _queue(self, Slot* s, uint64_t cid, const uint8_t* data, size_t n) noexcept:
        """Append bytes to the out chain and put the slot on the flush list.
        Returns -1 when the connection was dropped (pool ceiling or slow reader)."""
        cdef uint32_t h, cap, take, end
        cdef uint8_t* b
        while n:
            h = s.out_tail
            if h:
                b = <uint8_t*>self.pool.ptr(h)
                end = (<uint32_t*>b)[2]
                cap = self.pool.capacity_of(h) - OUT_HDR
                if end < cap:
                    take = <uint32_t>min(<size_t>(cap - end), n)
                    memcpy(b + OUT_HDR + end, data, take)
                    (<uint32_t*>b)[2] = end + take
                    data += take
                    n -= take
                    s.out_bytes += take
                    continue
            h = self.pool.acquire_c(min(n + OUT_HDR, <size_t>65536))
            if h == 0:
                self._drop(s, cid, 1006, C_CLOSED_NOMEM)
                return -1
            b = <uint8_t*>self.pool.ptr(h)
            (<uint32_t*>b)[0] = 0
            (<uint32_t*>b)[1] = 0
            (<uint32_t*>b)[2] = 0
            if s.out_tail:
                (<uint32_t*>self.pool.ptr(s.out_tail))[0] = h
            else:
                s.out_head = h
            s.out_tail = h
        if s.out_bytes > self.max_pending_output:
            # Over the cap: let the socket take what it will before judging the peer
            # (one callback may queue a lot for a fast reader within one batch).
            self._flush(s, cid, False)
            s = self.table.get(cid)
            if s == NULL:
                return -1
            if s.out_bytes > self.max_pending_output:
                self._drop(s, cid, 1006, C_CLOSED_SLOW_READER)
                return -1
        self._mark_dirty(s)
        return 0

    cdef int _queue_frame(self, Slot* s, uint8_t first, const uint8_t* payload, size_t n) noexcept:
        cdef uint8_t hdr[MAX_HEADER]
        cdef size_t hl = write_header(hdr, first, n, NULL)
        cdef uint64_t cid = _cid(self.table, s)
        if self._queue(s, cid, hdr, hl) < 0:
            return -1
        s = self.table.get(cid)
        if s == NULL:
            return -1
        if n and self._queue(s, cid, payload, n) < 0:
            return -1
        return 0

    cdef int _send_frame(self, Slot* s, uint64_t cid, int op, object data) except -2:
        cdef Py_buffer buf
        cdef int r
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        try:
            r = self._queue_frame(s, 0x80 | op, <const uint8_t*>buf.buf, buf.len)
        finally:
            PyBuffer_Release(&buf)
        if r == 0:
            s = self.table.get(cid)
            if s != NULL:
                if op <= 2:
                    s.msgs_out += 1
                    self.counters[C_MESSAGES_OUT] += 1
                if s.out_bytes > self.write_high_water:
                    self._pause(s, cid)
        return r

    cdef inline void _mark_dirty(self, Slot* s) noexcept:
        if s.flags & SF_DIRTY:
            return
        s.flags |= SF_DIRTY
        if self.n_dirty >= self.table.capacity:
            self._flush_dirty()
        self.dirty[self.n_dirty] = <uint32_t>(s - self.table.slots)
        self.n_dirty += 1
        if not self.in_batch and not self.flush_scheduled and self.loop is not None:
            # Sends from outside a readiness batch (async replies, publish) coalesce
            # until the loop's next turn: one send() per connection.
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)  # no bound method kept: no self-cycle

    def _scheduled_flush(self):
        self.flush_scheduled = False
        self._flush_dirty()

    cdef void _flush_dirty(self) noexcept:
        cdef uint32_t i = 0, idx
        cdef Slot* s
        while i < self.n_dirty:
            idx = self.dirty[i]
            i += 1
            s = &self.table.slots[idx]
            if s.state == SLOT_FREE or not (s.flags & SF_DIRTY):
                continue
            s.flags &= ~SF_DIRTY
            self._flush(s, _cid(self.table, s))
        self.n_dirty = 0

    cdef void _flush(self, Slot* s, uint64_t cid, bint resume=True) noexcept:
        """Write the out chain until it is empty or the socket would block. With
        `resume`, a connection paused for its output is read again once drained.

        One sendmsg() covers up to FLUSH_IOV blocks of the chain: a batch's replies
        usually span a few 1 KiB blocks, and one syscall (one segment on loopback)
        per connection per batch is the point of batching."""
        cdef uint32_t h, start, end
        cdef uint8_t* b
        cdef ssize_t sent
        cdef size_t left
        cdef int k
        cdef iovec iov[FLUSH_IOV]
        cdef msghdr msg
        while s.out_head:
            k = 0
            h = s.out_head
            while h and k < FLUSH_IOV:
                b = <uint8_t*>self.pool.ptr(h)
                start = (<uint32_t*>b)[1]
                end = (<uint32_t*>b)[2]
                if end > start:
                    iov[k].iov_base = b + OUT_HDR + start
                    iov[k].iov_len = end - start
                    k += 1
                h = (<uint32_t*>b)[0]
            if k == 0:
                sent = 0
            else:
                if k == 1:  # the usual case: send() skips copying a msghdr and an iovec in
                    sent = send(s.fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
                else:
                    memset(&msg, 0, sizeof(msg))
                    msg.msg_iov = iov
                    msg.msg_iovlen = k
                    sent = sendmsg(s.fd, &msg, MSG_NOSIGNAL)
                if sent < 0:
                    if errno == EAGAIN or errno == EINTR:
                        if not (s.flags & SF_WANT_OUT):
                            self.counters[C_WRITE_WAITS] += 1
                        s.flags |= SF_WANT_OUT
                        self._update_interest(s, cid)
                        return
                    self._drop(s, cid, 1006, C_CLOSED_EOF)
                    return
                s.bytes_out += sent
                self.counters[C_BYTES_OUT] += sent
                s.out_bytes -= sent
            # Release the blocks written whole; a block written in part keeps its rest.
            left = <size_t>sent
            while s.out_head:
                h = s.out_head
                b = <uint8_t*>self.pool.ptr(h)
                start = (<uint32_t*>b)[1]
                end = (<uint32_t*>b)[2]
                if left < end - start:
                    (<uint32_t*>b)[1] = start + <uint32_t>left
                    left = 0
                    break
                left -= end - start
                s.out_head = (<uint32_t*>b)[0]
                if s.out_head == 0:
                    s.out_tail = 0
                self.pool.release_c(h)
            if s.out_head and k < FLUSH_IOV:
                # The socket took less than offered: it is full. Wait for EPOLLOUT
                # rather than retrying into EAGAIN.
                if not (s.flags & SF_WANT_OUT):
                    self.counters[C_WRITE_WAITS] += 1
                s.flags |= SF_WANT_OUT
                self._update_interest(s, cid)
                return
        # Everything written.
        if s.flags & SF_DROP_AFTER_WRITE:
            if s.flags & SF_LINGER:
                s.flags &= ~SF_WANT_OUT
                self._update_interest(s, cid)
                shutdown(s.fd, SHUT_WR)
                return
            self._drop(s, cid, s.close_code if s.close_code else 1006, -1)
            return
        s.flags &= ~SF_WANT_OUT
        if resume:
            self._maybe_resume(s, cid)
            s = self.table.get(cid)
            if s == NULL:
                return
        self._update_interest(s, cid)

    # --- interest and pausing -------------------------------------------------------

    cdef void _update_interest(self, Slot* s, uint64_t cid) noexcept:
        """Make the epoll registration match what the slot wants; a syscall only
        when it changes."""
        cdef epoll_event ev
        cdef uint16_t want = 0
        if not (s.flags & SF_READ_PAUSED) and (
                not (s.flags & SF_DROP_AFTER_WRITE) or (s.flags & SF_LINGER)):
            want |= SF_REG_IN
        if s.flags & SF_WANT_OUT:
            want |= SF_REG_OUT
        if (s.flags & (SF_REG_IN | SF_REG_OUT)) == want:
            return
        ev.events = ((EPOLLIN | EPOLLRDHUP) if want & SF_REG_IN else 0) | \
                    (EPOLLOUT if want & SF_REG_OUT else 0)
        ev.data.u64 = cid
        epoll_ctl(self.epfd, EPOLL_CTL_MOD, s.fd, &ev)
        s.flags = (s.flags & ~(SF_REG_IN | SF_REG_OUT)) | want

    cdef void _pause(self, Slot* s, uint64_t cid) noexcept:
        if not (s.flags & SF_READ_PAUSED):
            s.flags |= SF_READ_PAUSED
            self.counters[C_READ_PAUSES] += 1
            self._update_interest(s, cid)

    cdef void _maybe_resume(self, Slot* s, uint64_t cid) noexcept:
        """Resume reading once requests in flight and pending output are low again;
        first parse what was kept while paused."""
        cdef uint32_t blk, n
        cdef uint32_t now
        if not (s.flags & SF_READ_PAUSED):
            return
        if s.inflight >= self.max_inflight or s.out_bytes > self.write_high_water // 2:
            return
        if s.flags & SF_DROP_AFTER_WRITE:
            return
        s.flags &= ~SF_READ_PAUSED
        if s.in_block and s.state == SLOT_OPEN:
            blk = s.in_block
            n = s.in_len
            s.in_block = 0
            s.in_len = 0
            now = monotonic_ms_c()
            # Parse from the block; if reading pauses again the rest is copied to a
            # new block before this one is released.
            self._frames(s, cid, <const uint8_t*>self.pool.ptr(blk), n, now)
            self.pool.release_c(blk)
            s = self.table.get(cid)
            if s == NULL or (s.flags & SF_READ_PAUSED):
                return
        self._update_interest(s, cid)

    # --- Python API: the transport the JSON-RPC layer writes to -----------------------

    def send(self, cid, data, bint binary=False):
        """Queue one message (text unless `binary`) to `cid`. Returns False when the
        connection is gone or closing. Bytes are written at the end of the current
        batch, or on the loop's next turn."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        if s == NULL or s.state != SLOT_OPEN or (s.flags & SF_CLOSE_SENT):
            return False
        return self._send_frame(s, cid, 2 if binary else 1, data) == 0

    def send_many(self, cids, data, size_t max_queued, bint binary=False):
        """Write the same message to every id in `cids`; the frame is encoded once.
        Returns the ids not written: gone, closing, or whose pending output would
        pass `max_queued` bytes."""
        cdef Py_buffer buf
        cdef uint8_t hdr[MAX_HEADER]
        cdef size_t hl
        cdef Slot* s
        cdef list skipped = []
        cdef uint64_t c
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        try:
            hl = write_header(hdr, 0x80 | (2 if binary else 1), buf.len, NULL)
            for cid in cids:
                c = cid
                s = self.table.get(c)
                if s == NULL or s.state != SLOT_OPEN or (s.flags & SF_CLOSE_SENT) \
                        or s.out_bytes + hl + <size_t>buf.len > max_queued:
                    skipped.append(cid)
                    continue
                if self._queue(s, c, hdr, hl) < 0:
                    skipped.append(cid)
                    continue
                s = self.table.get(c)
                if s == NULL or (buf.len and self._queue(s, c, <const uint8_t*>buf.buf, buf.len) < 0):
                    skipped.append(cid)
                    continue
                s = self.table.get(c)
                if s != NULL:
                    s.msgs_out += 1
                    self.counters[C_MESSAGES_OUT] += 1
        finally:
            PyBuffer_Release(&buf)
        return skipped

    def begin(self, cid):
        """A request of `cid` is in flight (async handler). Past max_inflight the
        connection is not read until end() brings it back under."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        if s == NULL or s.state != SLOT_OPEN:
            return
        s.inflight += 1
        self.inflight_total += 1
        if s.inflight >= self.max_inflight:
            self._pause(s, cid)

    def end(self, cid):
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        if s == NULL or s.state != SLOT_OPEN or s.inflight == 0:
            return
        s.inflight -= 1
        self.inflight_total -= 1
        self._maybe_resume(s, cid)

    def close(self, cid, int code=1000, reason=b""):
        """Start the closing handshake with `code`. False when the id is stale."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        if isinstance(reason, str):
            reason = reason.encode()
        if s == NULL or s.state != SLOT_OPEN:
            return False
        self._close_c(s, cid, code, bytes(reason)[:123], C_CLOSED_BY_SERVER)
        return True

    def abort(self, cid):
        """Drop the connection at once, without a closing handshake."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        if s == NULL:
            return False
        self._drop(s, cid, 1006, C_CLOSED_BY_SERVER)
        return True

    def peer(self, cid):
        cdef Slot* s = self.table._slot(cid)
        return (addr_text(s.addr), s.port)

    def pending_output(self, cid):
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        return s.out_bytes if s != NULL else 0

    def connections(self):
        """Ids of every upgraded connection (for stop() and tests; O(slots ever used))."""
        cdef uint32_t i
        cdef list out = []
        for i in range(self.table.high):
            if self.table.slots[i].state == SLOT_OPEN:
                out.append(_cid(self.table, &self.table.slots[i]))
        return out

    # --- housekeeping: one sweep replaces every per-connection timer -----------------

    def sweep(self, uint32_t handshake_timeout_ms=0, uint32_t idle_timeout_ms=0,
              uint32_t ping_interval_ms=0, uint32_t pong_timeout_ms=0,
              uint32_t close_timeout_ms=5000, now=None):
        """One pass over the table: drop handshakes past their timeout, close idle
        connections with 1001, ping quiet ones, drop those whose ping went unanswered
        and those whose closing handshake timed out. 0 disables a check."""
        cdef uint32_t t = monotonic_ms_c() if now is None else <uint32_t>now
        cdef uint32_t i
        cdef Slot* s
        cdef uint64_t cid
        cdef uint8_t ping_payload[4]
        self.in_batch = True
        try:
            for i in range(self.table.high):
                s = &self.table.slots[i]
                if s.state == SLOT_FREE:
                    continue
                cid = _cid(self.table, s)
                if s.state == SLOT_HANDSHAKE or s.state == SLOT_UPGRADING:
                    if handshake_timeout_ms and elapsed(t, s.ping_sent, handshake_timeout_ms):
                        self._drop(s, cid, 1006, C_HANDSHAKE_TIMEOUT)
                elif s.state == SLOT_CLOSING:
                    if elapsed(t, s.ping_sent, close_timeout_ms):
                        self._drop(s, cid, 1006, C_CLOSED_CLOSE_TIMEOUT)
                elif idle_timeout_ms and elapsed(t, s.last_message, idle_timeout_ms):
                    self._close_c(s, cid, 1001, b"idle timeout", C_CLOSED_IDLE)
                elif s.flags & SF_PING_SENT:
                    if pong_timeout_ms and elapsed(t, s.ping_sent, pong_timeout_ms):
                        self._drop(s, cid, 1006, C_CLOSED_PONG_TIMEOUT)
                elif ping_interval_ms and elapsed(t, s.last_receive, ping_interval_ms):
                    s.flags |= SF_PING_SENT
                    s.ping_sent = t
                    memcpy(ping_payload, &t, 4)
                    self.counters[C_PINGS_SENT] += 1
                    self._queue_frame(s, 0x89, ping_payload, 4)
        finally:
            self.in_batch = False
            self._flush_dirty()

    def close_all(self, int code=1001, reason=b"server shutting down"):
        """Start the closing handshake on every open connection; drop pending handshakes."""
        cdef uint32_t i
        cdef Slot* s
        if isinstance(reason, str):
            reason = reason.encode()
        self.in_batch = True
        try:
            for i in range(self.table.high):
                s = &self.table.slots[i]
                if s.state == SLOT_FREE:
                    continue
                if s.state == SLOT_OPEN:
                    self._close_c(s, _cid(self.table, s), code, bytes(reason)[:123], C_CLOSED_BY_SERVER)
                elif s.state == SLOT_HANDSHAKE or s.state == SLOT_UPGRADING:
                    self._drop(s, _cid(self.table, s), 1006, C_CLOSED_BY_SERVER)
        finally:
            self.in_batch = False
            self._flush_dirty()

    def abort_all(self):
        """Drop every connection now (end of stop(), after the close timeout)."""
        cdef uint32_t i
        cdef Slot* s
        for i in range(self.table.high):
            s = &self.table.slots[i]
            if s.state == SLOT_FREE:
                continue
            self._drop(s, _cid(self.table, s), 1006, C_CLOSED_BY_SERVER)

    def counters_dict(self):
        return {COUNTER_NAMES[i]: self.counters[i] for i in range(C_N)}

    def __len__(self):
        return self.table.count

    cdef void _call(self, object fn) noexcept:
        if fn is None:
            return
        try:
            fn()
        except BaseException:
            _log_exception("callback")


cdef void _log_exception(str where) noexcept:
    global _log
    try:
        if _log is None:
            import logging
            _log = logging.getLogger("fastrpc.core")
        _log.exception("error in %s", where)
    except BaseException:
        pass


_HTTP_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 32\r\n\r\n"
             b"request header fields too large\n")
_HTTP_503 = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\n\r\n"
             b"service unavailable\n")
_HTTP_500 = (b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 22\r\n\r\n"
             b"internal server error\n")
