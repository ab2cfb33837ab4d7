# Engine: the connection protocol of both roles, without I/O. It turns bytes received
# on a connection into messages and events for Python, and messages from Python into
# bytes waiting in the connection's out chain; timers are one sweep over the slots'
# stamps. The four I/O hooks (_flush, _try_send, _update_interest, _release_fd) do
# nothing here: used alone (sans-I/O), the caller feeds receive_data() and pulls
# data_to_send(). The epoll driver (Reactor, _driver.pxi) overrides the hooks with
# syscalls and calls feed_c() with what recv() read into its scratch buffer.
#
# Roles, per connection: a server connection (accepted) reads masked frames and writes
# unmasked ones, and starts in the HTTP phase, where a request may be a WebSocket
# upgrade or plain HTTP (keep-alive, with a body). A client connection (SF_CLIENT)
# writes masked frames with fresh keys, reads unmasked ones, and starts by sending its
# upgrade request and checking the 101 response (on_response).
#
# Re-entrancy: any Python callback may send to, close or drop any connection,
# including the one being served. After every callback the slot is looked up again
# by id (generation-checked) before it is touched.

cdef extern from "sys/uio.h" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef enum:
    OUT_HDR = 12                # out block header: next handle, start, end (uint32 each)
    REQUEST_LINE_CHECK = 0x3FFF  # bytes of a request line checked byte by byte (see below)

# What Python's on_handshake / on_body answer asks for (HTTP_* in Python).
cdef enum:
    A_CLOSE = 0        # write the response, then close (False)
    A_UPGRADE = 1      # write the 101 and switch to WebSocket (True)
    A_KEEP_ALIVE = 2   # write the response, then read the next request
    A_BODY = 3         # collect a body of `response` (an int) bytes, then on_body()
    A_DEFER = 4        # no response yet: Python calls respond() later

HTTP_CLOSE = A_CLOSE
HTTP_UPGRADE = A_UPGRADE
HTTP_KEEP_ALIVE = A_KEEP_ALIVE
HTTP_BODY = A_BODY
HTTP_DEFER = A_DEFER

# Counter indexes (Engine.counters); names in COUNTER_NAMES, same order.
cdef enum:
    C_ACCEPTED = 0
    C_UPGRADED
    C_REFUSED_HTTP          # HTTP answered with a status >= 400
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
    C_HTTP_REQUESTS         # plain HTTP requests answered, any status (early 400s and 500s too)
    C_CLIENT_OPENED         # client connections whose 101 was accepted
    C_CLIENT_FAILED         # client connections that ended before their 101
    C_FRAMES_IN             # frame headers read and accepted, control frames included
    C_FRAMES_OUT            # frames encoded into an out chain or sent straight away
    C_N

COUNTER_NAMES = (
    "accepted", "upgraded", "refused_http", "handshake_too_large", "handshake_timeout",
    "pending_overflow", "accept_paused", "closed_peer", "closed_eof", "closed_protocol",
    "closed_too_big", "closed_nomem", "closed_idle", "closed_pong_timeout",
    "closed_slow_reader", "closed_close_timeout", "closed_by_server",
    "closed_handler_error", "messages_in", "messages_out", "bytes_in", "bytes_out",
    "pings_sent", "read_pauses", "write_waits", "batches", "http_requests",
    "client_opened", "client_failed", "frames_in", "frames_out",
)

# Connection events (Engine.on_event): a connection ending for reason r (a counter
# index) is reported when bit r of Engine.event_mask is set. Abnormal reasons are the
# default mask, and they take precedence over normal ones (see Engine._note_end).
cdef uint64_t _ABNORMAL = (
    (1ULL << C_REFUSED_HTTP) | (1ULL << C_HANDSHAKE_TOO_LARGE) | (1ULL << C_HANDSHAKE_TIMEOUT)
    | (1ULL << C_PENDING_OVERFLOW) | (1ULL << C_CLOSED_EOF) | (1ULL << C_CLOSED_PROTOCOL)
    | (1ULL << C_CLOSED_TOO_BIG) | (1ULL << C_CLOSED_NOMEM) | (1ULL << C_CLOSED_PONG_TIMEOUT)
    | (1ULL << C_CLOSED_SLOW_READER) | (1ULL << C_CLOSED_CLOSE_TIMEOUT)
    | (1ULL << C_CLOSED_HANDLER_ERROR))
cdef uint64_t _NORMAL = (1ULL << C_CLOSED_PEER) | (1ULL << C_CLOSED_IDLE) | (1ULL << C_CLOSED_BY_SERVER)
EVENTS_ABNORMAL = _ABNORMAL
EVENTS_NORMAL = _NORMAL

_log = None


cdef inline uint64_t _cid(ConnTable t, Slot* s) noexcept:
    return (<uint64_t>s.gen << 32) | <uint64_t>(s - t.slots)


cdef inline bint _http_phase(uint8_t state) noexcept:
    """A server slot counted in n_pending (not yet a WebSocket, not closing)."""
    return state == SLOT_HANDSHAKE or state == SLOT_UPGRADING or \
        state == SLOT_HTTP_BODY or state == SLOT_HTTP_WAIT


cdef inline bint _parse_clean(const FrameState* st) noexcept:
    """Nothing partial: the state is equivalent to all zeroes (flags of a failed or
    closed parser are dropped with it: such a connection reads nothing more)."""
    return not (st.flags & FS_IN_PAYLOAD) and st.hdr_len == 0 and st.msg_op == 0 \
        and st.ctl_len == 0 and st.msg_block == 0 and st.ctl_block == 0


# RFC 9110 tchar, for the method token.
cdef bint _TCHAR[256]
for _c in bytearray(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"):
    _TCHAR[<int>_c] = True


@cython.no_gc_clear  # __dealloc__ may run from the cycle collector: keep its fields
cdef class Engine:
    """The connection protocol of a server and of clients, sans-I/O.

    Used alone it does no I/O: ``open_connection()`` adds a connection,
    ``receive_data(cid, data)`` feeds what the peer sent; after calling either (and
    after any send, close or sweep) call ``data_to_send(cid)`` and write the bytes
    it returns. ``Reactor`` is the same engine driving real sockets with epoll.

    Callbacks (all optional except on_text; none may block; exceptions are caught,
    logged and turn into a 1011 close of the connection concerned, or a 500):

    * ``on_handshake(cid, head: bytes, ip: str, port: int) -> (response, action)``
      (server role) once per HTTP request with its complete head. ``action``:
      ``HTTP_UPGRADE`` (or True): write ``response`` (a 101) and switch to WebSocket;
      ``HTTP_CLOSE`` (or False): write it and close; ``HTTP_KEEP_ALIVE``: write it and
      read the next request; ``HTTP_BODY``: ``response`` is the body's length in
      bytes: collect it, then call ``on_body``; ``HTTP_DEFER``: answer later with
      ``respond()`` (the connection is not read meanwhile).
    * ``on_body(cid, body: bytes) -> (response, action)``: the body asked for;
      ``action`` is ``HTTP_CLOSE``, ``HTTP_KEEP_ALIVE`` or ``HTTP_DEFER``.
    * ``on_response(cid, head: bytes) -> bool`` (client role): the server's response
      head; True opens the connection (the caller checked the 101), False drops it.
    * ``on_text(cid, payload: bytes) -> bytes | None`` / ``on_binary(...)``: a whole
      message; a returned value is sent back as one message of the same type.
    * ``on_close(cid, code: int)``: an upgraded server connection, or any client
      connection, ended (the slot is already free; sending to it is a no-op). ``code``
      is the close code received, or 1006.
    * ``on_http_close(cid)``: a server connection that never upgraded ended (after
      plain HTTP, while a body or a deferred answer was pending, or refused), so
      Python can forget what it kept for the request.
    * ``on_event(reason, code, detail, ip, port)``: a rare event, for logs: a
      connection ended for a reason whose bit is set in ``event_mask`` (default
      ``EVENTS_ABNORMAL``), or a socket was closed at accept (``pending_overflow``).
      ``reason`` indexes ``COUNTER_NAMES``; ``code`` is the HTTP status of a refusal the
      core wrote (400, 431, 500, 503; 0 for a drop), or the close code of a WebSocket
      (the one we sent, else 1006); ``detail`` names a frame error ("invalid UTF-8"),
      else "". Called once per connection, after its slot is freed (and before
      on_close / on_http_close); never on the path of a normal message. None (the
      default) costs one pointer test per connection end.
    """
    cdef readonly ConnTable table
    cdef readonly BufferPool pool
    cdef ParserConfig cfg                    # server role: frames from clients are masked
    cdef ParserConfig ccfg                   # client role: frames from servers are not
    cdef uint32_t* dirty                     # slot indexes with output to flush
    cdef uint32_t n_dirty
    cdef bint in_batch
    cdef bint flush_scheduled
    cdef uint64_t counters[C_N]
    cdef readonly uint32_t n_open            # upgraded server connections
    cdef readonly uint32_t n_pending         # server sockets in the HTTP phase
    cdef readonly uint32_t n_clients         # client connections, any state
    cdef readonly uint32_t inflight_total    # requests in flight, all connections
    # limits
    cdef public uint32_t max_open
    cdef public uint32_t max_pending
    cdef public uint32_t max_clients
    cdef public uint32_t max_handshake_size
    cdef public uint32_t max_inflight
    cdef public uint32_t write_high_water
    cdef public uint32_t max_pending_output
    cdef public object on_handshake
    cdef public object on_body
    cdef public object on_response
    cdef public object on_text
    cdef public object on_binary
    cdef public object on_close
    cdef public object on_http_close
    cdef public object on_accept_paused
    cdef public object on_event
    cdef public uint64_t event_mask          # bit r: report ends for reason r (a C_* index)
    # HTTP answers the core writes itself (the server sets them from handshake.py):
    cdef public bytes http_400   # the request line cannot be HTTP (checked as it arrives)
    cdef public bytes http_431   # request head over max_handshake_size
    cdef public bytes http_503   # admission lost a race between Python's check and the upgrade
    cdef public bytes http_500   # on_handshake raised
    cdef object loop

    def __cinit__(self, BufferPool pool not None, uint32_t max_open, uint32_t max_pending,
                  uint32_t max_per_ip=256, *, size_t max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                  size_t max_fragments=DEFAULT_MAX_FRAGMENTS, uint32_t max_handshake_size=8192,
                  uint32_t max_inflight=64, uint32_t write_high_water=65536,
                  uint32_t max_pending_output=4 * 1024 * 1024, uint32_t max_clients=0):
        cdef uint32_t capacity = max_open + max_pending + max_clients
        check_pool(pool, max_message_size)
        if max_handshake_size > pool.classes[pool.n_classes - 1].block_size:
            raise ValueError("max_handshake_size is over the pool's largest block")
        init_config(&self.cfg, False, max_message_size, max_fragments)
        init_config(&self.ccfg, True, max_message_size, max_fragments)
        self.pool = pool
        self.table = ConnTable(max(capacity, 1), max_per_ip, pool)
        self.max_open = max_open
        self.max_pending = max_pending
        self.max_clients = max_clients
        self.max_handshake_size = max_handshake_size
        self.max_inflight = max_inflight
        self.write_high_water = write_high_water
        self.max_pending_output = max_pending_output
        self.dirty = <uint32_t*>malloc(sizeof(uint32_t) * max(capacity, 1))
        if self.dirty == NULL:
            raise MemoryError()
        self.event_mask = _ABNORMAL
        self.http_400 = _HTTP_400
        self.http_431 = _HTTP_431
        self.http_503 = _HTTP_503
        self.http_500 = _HTTP_500

    def __dealloc__(self):
        free(self.dirty)

    # --- I/O hooks: nothing here; the driver overrides them --------------------------

    cdef void _flush(self, Slot* s, uint64_t cid, bint resume=True) noexcept:
        """Write the out chain to the socket. Sans-I/O: the caller pulls it with
        data_to_send(), which ends in _written_all()."""
        pass

    cdef ssize_t _try_send(self, Slot* s, const uint8_t* p, size_t n) noexcept:
        """Write p[:n] now if the connection can take it; -2: no direct I/O (queue it)."""
        return -2

    cdef void _update_interest(self, Slot* s, uint64_t cid) noexcept:
        """Make the readiness registration match what the slot wants."""
        pass

    cdef void _release_fd(self, int fd) noexcept:
        """The connection's socket is no longer needed (its slot is already free)."""
        pass

    # --- input: what the driver calls with received bytes ------------------------------

    cdef int feed_c(self, Slot* s, uint64_t cid, const uint8_t* data, size_t n,
                    uint32_t now) noexcept:
        """Bytes received on `cid`. Returns -1 when the slot is gone or must not be read
        further in this batch (paused, closing: the rest, if any, was kept)."""
        s.last_receive = now
        s.flags &= ~SF_PING_SENT
        self.counters[C_BYTES_IN] += n
        if s.flags & SF_LINGER:
            return 0  # refused: discard until the peer's EOF
        if s.state == SLOT_CONNECTING:
            s.state = SLOT_HANDSHAKE
        if s.state == SLOT_HANDSHAKE:
            return self._handshake_bytes(s, cid, data, n, now)
        if s.state == SLOT_HTTP_BODY:
            return self._body_bytes(s, cid, data, n, now)
        if s.state == SLOT_HTTP_WAIT or s.state == SLOT_UPGRADING:
            return self._keep_input(s, cid, data, n)  # pipelined: read after the answer
        return self._frames(s, cid, data, n, now)

    cdef void eof_c(self, Slot* s, uint64_t cid) noexcept:
        """The peer closed its side (or the socket failed)."""
        self._drop(s, cid, 1006, C_CLOSED_EOF)

    cdef int _keep_input(self, Slot* s, uint64_t cid, const uint8_t* data, size_t n) noexcept:
        """Keep bytes that must wait (reading paused) in in_block; -1 (never 0)."""
        cdef uint32_t nh = self.pool.grow_c(s.in_block, s.in_len, s.in_len + n)
        if nh == 0:
            if s.state == SLOT_OPEN:
                self._fail_conn(s, cid, 1013, E_NOMEM, C_CLOSED_NOMEM)
            else:
                self._drop(s, cid, 1006, C_CLOSED_NOMEM)
            return -1
        s.in_block = nh
        memcpy(self.pool.ptr(nh) + s.in_len, data, n)
        s.in_len += n
        return -1

    # --- the HTTP phase ------------------------------------------------------------

    cdef int _check_request_line(self, Slot* s, const uint8_t* p, size_t n) noexcept:
        """Check the request line as it arrives, so bytes that cannot be HTTP are
        answered 400 at once instead of waiting for the handshake timeout. Grammar
        (loose, the Python parser has the last word): a method token of 1-32 tchars,
        SP, a target of visible ASCII, SP, "HTTP/" digits and dots, CRLF. Progress
        lives in close_code: 14 bits of position, 2 of phase (0 method, 1 target,
        2 version, 3 done); lines past 16 KiB are left to the head limit.
        Returns -1 for a line that cannot be valid."""
        cdef uint32_t pos = s.close_code & REQUEST_LINE_CHECK
        cdef uint32_t phase = s.close_code >> 14
        cdef uint8_t c
        while phase != 3 and pos < n:
            c = p[pos]
            if phase == 0:
                if c == 32:
                    if pos == 0:
                        return -1
                    phase = 1
                elif not _TCHAR[c] or pos >= 32:
                    return -1
            elif phase == 1:
                if c == 32:
                    phase = 2
                elif c < 0x21 or c > 0x7E:
                    return -1
            else:
                if c == 13:
                    if pos + 1 >= n:
                        break  # the LF is still to come
                    if p[pos + 1] != 10:
                        return -1
                    phase = 3
                elif not (c == 46 or c == 47 or 48 <= c <= 57 or c == 72 or c == 80 or c == 84):
                    return -1  # not one of "HTTP/0123456789."
            pos += 1
            if pos >= REQUEST_LINE_CHECK:
                phase = 3
        s.close_code = <uint16_t>((phase << 14) | (pos & REQUEST_LINE_CHECK))
        return 0

    cdef int _handshake_bytes(self, Slot* s, uint64_t cid, const uint8_t* data, size_t n,
                              uint32_t now) noexcept:
        """Gather a head (a request, or the client's 101 response); at its end hand it
        to Python. Returns -1 when the slot is gone or must not be read further in
        this batch."""
        cdef uint32_t old = s.in_len
        cdef uint32_t nh
        cdef size_t start, head_len, rest
        # Only bytes that may still be head are gathered (the limit is the head's; what
        # follows it in the same read, frames or a body, is handed on as leftover).
        cdef size_t take = min(n, <size_t>(self.max_handshake_size - old))
        cdef const uint8_t* p
        cdef const uint8_t* hit
        nh = self.pool.grow_c(s.in_block, s.in_len, old + take)
        if nh == 0:
            self._drop(s, cid, 1006, C_CLOSED_NOMEM)
            return -1
        s.in_block = nh
        memcpy(self.pool.ptr(nh) + old, data, take)
        s.in_len = old + take
        p = <const uint8_t*>self.pool.ptr(nh)
        if not (s.flags & SF_CLIENT) and self._check_request_line(s, p, s.in_len) < 0:
            self.counters[C_HTTP_REQUESTS] += 1
            self.counters[C_REFUSED_HTTP] += 1
            self._refuse(s, cid, self.http_400, C_REFUSED_HTTP, 400)
            return -1
        start = old - 3 if old >= 3 else 0
        hit = <const uint8_t*>memmem(p + start, s.in_len - start, b"\r\n\r\n", 4)
        if hit == NULL:
            if s.in_len >= self.max_handshake_size:
                # Never buffer past the limit: answer 431 from the bytes we have.
                self.counters[C_HANDSHAKE_TOO_LARGE] += 1
                if s.flags & SF_CLIENT:
                    self._drop(s, cid, 1006, -1)
                else:
                    self._refuse(s, cid, self.http_431, C_HANDSHAKE_TOO_LARGE, 431)
                return -1
            return 0
        head_len = (hit - p) + 4
        head = PyBytes_FromStringAndSize(<const char*>p, head_len)
        rest = s.in_len - head_len
        if rest + (n - take):
            leftover = PyBytes_FromStringAndSize(<const char*>p + head_len, rest) + \
                PyBytes_FromStringAndSize(<const char*>data + take, n - take)
        else:
            leftover = None
        self.pool.release_c(s.in_block)
        s.in_block = 0
        s.in_len = 0
        s.close_code = 0
        if s.flags & SF_CLIENT:
            return self._response_head(s, cid, head, leftover, now)
        s.state = SLOT_UPGRADING
        return self._request_head(cid, head, leftover, now)

    cdef int _request_head(self, uint64_t cid, bytes head, object leftover, uint32_t now) noexcept:
        cdef Slot* s
        try:
            s = self.table.get(cid)
            ip = addr_text(s.addr)
            response, action = self.on_handshake(cid, head, ip, s.port)
            s = self.table.get(cid)
            if s == NULL:
                return -1
            if action is True or action is False:
                action = 1 if action else 0
            return self._http_answer(s, cid, response, action, leftover, now, True)
        except BaseException:
            _log_exception("on_handshake")
            s = self.table.get(cid)
            if s != NULL:
                self.counters[C_HTTP_REQUESTS] += 1
                self.counters[C_REFUSED_HTTP] += 1
                self._refuse(s, cid, self.http_500, C_REFUSED_HTTP, 500)
            return -1

    cdef int _http_answer(self, Slot* s, uint64_t cid, object response, int action,
                          object leftover, uint32_t now, bint from_head) except -2:
        """Carry out Python's answer to a request head or body. `leftover`: bytes the
        client sent after it (pipelined; or the first frames or body bytes)."""
        cdef Py_buffer buf
        cdef uint32_t need
        if action != A_BODY and action != A_DEFER and type(response) is not bytes:
            response = bytes(response)  # any buffer; a str raises (-> 500)
        if action == A_UPGRADE and from_head:
            # Admission is decided by Python before it answers 101 (admission()), so
            # the per-IP count cannot be over the cap here; check anyway.
            if self.table.ip_admit(s) < 0 or self.n_open >= self.max_open:
                self.counters[C_HTTP_REQUESTS] += 1
                self.counters[C_REFUSED_HTTP] += 1
                self._refuse(s, cid, self.http_503, C_REFUSED_HTTP, 503)
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
                return self._feed_object(s, cid, leftover, now)
            return 0
        if action == A_BODY and from_head:
            need = <uint32_t>response
            if need == 0:
                raise ValueError("HTTP_BODY needs a length > 0")
            s.state = SLOT_HTTP_BODY
            s.last_message = need  # bytes of body still to come (unused in this phase)
            if leftover is not None:
                return self._feed_object(s, cid, leftover, now)
            return 0
        self.counters[C_HTTP_REQUESTS] += 1
        if action == A_DEFER:
            s.state = SLOT_HTTP_WAIT
            s.flags |= SF_READ_PAUSED  # not a read pause of a WebSocket: not counted
            self._update_interest(s, cid)
            if leftover is not None:
                PyObject_GetBuffer(leftover, &buf, PyBUF_SIMPLE)
                try:
                    self._keep_input(s, cid, <const uint8_t*>buf.buf, buf.len)
                finally:
                    PyBuffer_Release(&buf)
            return -1
        if len(response) >= 10 and (<bytes>response)[9] >= 52:  # "HTTP/1.1 4xx/5xx"
            self.counters[C_REFUSED_HTTP] += 1
        if action == A_KEEP_ALIVE:
            if self._queue(s, cid, <const uint8_t*>PyBytes_AS_STRING(response), len(response)) < 0:
                return -1
            s = self.table.get(cid)
            if s == NULL:
                return -1
            self._next_request(s, now)
            if leftover is not None:
                return self._feed_object(s, cid, leftover, now)
            return 0
        self._refuse(s, cid, response)
        return -1

    cdef void _next_request(self, Slot* s, uint32_t now) noexcept:
        s.state = SLOT_HANDSHAKE
        s.flags |= SF_KEEP_ALIVE  # answered one request: waiting for the next is idling
        s.ping_sent = now  # the keep-alive wait counts as a handshake (timeout)
        s.close_code = 0

    cdef int _feed_object(self, Slot* s, uint64_t cid, object data, uint32_t now) except -2:
        cdef Py_buffer buf
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        try:
            return self.feed_c(s, cid, <const uint8_t*>buf.buf, buf.len, now) if buf.len else 0
        finally:
            PyBuffer_Release(&buf)

    cdef int _body_bytes(self, Slot* s, uint64_t cid, const uint8_t* data, size_t n,
                         uint32_t now) noexcept:
        """Collect a request body of the length Python asked for; then on_body()."""
        cdef size_t take = min(<size_t>s.last_message, n)
        cdef uint32_t nh = self.pool.grow_c(s.in_block, s.in_len, s.in_len + take)
        if nh == 0:
            self._drop(s, cid, 1006, C_CLOSED_NOMEM)
            return -1
        s.in_block = nh
        memcpy(self.pool.ptr(nh) + s.in_len, data, take)
        s.in_len += take
        s.last_message -= take
        if s.last_message:
            return 0
        body = PyBytes_FromStringAndSize(self.pool.ptr(nh), s.in_len)
        leftover = PyBytes_FromStringAndSize(<const char*>data + take, n - take) if n > take else None
        self.pool.release_c(s.in_block)
        s.in_block = 0
        s.in_len = 0
        s.state = SLOT_UPGRADING  # in Python's hands
        try:
            response, action = self.on_body(cid, body)
            s = self.table.get(cid)
            if s == NULL:
                return -1
            if action not in (A_CLOSE, A_KEEP_ALIVE, A_DEFER):
                raise ValueError(f"on_body answered with action {action!r}")
            return self._http_answer(s, cid, response, action, leftover, now, False)
        except BaseException:
            _log_exception("on_body")
            s = self.table.get(cid)
            if s != NULL:
                self.counters[C_HTTP_REQUESTS] += 1
                self.counters[C_REFUSED_HTTP] += 1
                self._refuse(s, cid, self.http_500, C_REFUSED_HTTP, 500)
            return -1

    def respond(self, cid, response, bint keep_alive=True):
        """The response to a request answered with HTTP_DEFER. With `keep_alive` the
        connection then reads the next request (bytes already sent are parsed now);
        otherwise it closes after the response. False when `cid` is gone or was not
        waiting for a response."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        cdef uint32_t blk, n
        if s == NULL or s.state != SLOT_HTTP_WAIT:
            return False
        if type(response) is not bytes:
            response = bytes(response)
        if len(response) >= 10 and (<bytes>response)[9] >= 52:
            self.counters[C_REFUSED_HTTP] += 1
        if not keep_alive:
            self._refuse(s, cid, response)
            return True
        if self._queue(s, cid, <const uint8_t*>PyBytes_AS_STRING(response), len(response)) < 0:
            return True
        s = self.table.get(cid)
        if s == NULL:
            return True
        self._next_request(s, monotonic_ms_c())
        s.flags &= ~SF_READ_PAUSED
        if s.in_block:
            blk = s.in_block
            n = s.in_len
            s.in_block = 0
            s.in_len = 0
            self.in_batch = True
            try:
                self._handshake_bytes(s, cid, <const uint8_t*>self.pool.ptr(blk), n, monotonic_ms_c())
            finally:
                self.in_batch = False
                self.pool.release_c(blk)
            s = self.table.get(cid)
            if s == NULL:
                self._flush_dirty()
                return True
        self._update_interest(s, cid)
        self._flush_dirty()
        return True

    cdef int _response_head(self, Slot* s, uint64_t cid, bytes head, object leftover,
                            uint32_t now) noexcept:
        """Client role: the server's answer to our upgrade request."""
        try:
            ok = self.on_response(cid, head) if self.on_response is not None else False
            s = self.table.get(cid)
            if s == NULL:
                return -1
            if not ok:
                self._drop(s, cid, 1006, -1)
                return -1
            s.state = SLOT_OPEN
            s.last_message = now
            self.counters[C_CLIENT_OPENED] += 1
            if leftover is not None:
                return self._feed_object(s, cid, leftover, now)
            return 0
        except BaseException:
            _log_exception("on_response")
            s = self.table.get(cid)
            if s != NULL:
                self._drop(s, cid, 1006, -1)
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

    cdef void _refuse(self, Slot* s, uint64_t cid, bytes response, int reason=-1,
                      int status=0) noexcept:
        """Write an HTTP answer, then half-close and discard input until EOF (so the
        peer reads the answer instead of a reset), bounded by the close timeout.
        `reason` / `status`: a refusal the core decided, reported by on_event when the
        connection ends (Python reports the answers it decided itself)."""
        if reason >= 0:
            self._note_end(s, reason, status)
        if _http_phase(s.state) and not (s.flags & SF_CLIENT):
            self.n_pending -= 1
        s.state = SLOT_CLOSING
        s.ping_sent = monotonic_ms_c()
        s.flags |= SF_DROP_AFTER_WRITE | SF_LINGER
        s.flags &= ~SF_READ_PAUSED
        if s.in_block:
            self.pool.release_c(s.in_block)
            s.in_block = 0
            s.in_len = 0
        self._queue(s, cid, <const uint8_t*>PyBytes_AS_STRING(response), len(response))

    # --- frames ----------------------------------------------------------------------

    cdef int _frames(self, Slot* s, uint64_t cid, const uint8_t* data, size_t n,
                     uint32_t now) noexcept:
        """Parse frames from data[:n] and deliver them. Returns -1 when the slot is
        gone or reading must stop for this batch (paused; the rest is kept).

        The parser state lives on the stack while parsing and goes back to a pooled
        block only if something is left partial: an idle connection has none."""
        cdef Parsing ctx
        cdef int r
        cdef uint32_t h
        if s.pstate:
            memcpy(&ctx.st, self.pool.ptr(s.pstate), sizeof(FrameState))
            self.pool.release_c(s.pstate)
            s.pstate = 0
        else:
            memset(&ctx.st, 0, sizeof(FrameState))
        ctx.idx = <uint32_t>(s - self.table.slots)
        ctx.gen = s.gen
        ctx.outer = self.table.parsing
        self.table.parsing = &ctx
        r = self._parse_deliver(&ctx.st, s, cid, data, n, now)
        self.table.parsing = ctx.outer
        if ctx.gen == 0:
            return -1  # the slot was freed meanwhile, with the state's blocks
        s = self.table.get(cid)
        if s == NULL:  # not reached: a freed slot clears ctx.gen
            release_parser_blocks(&ctx.st, self.pool)
            return -1
        if ctx.st.flags & (FS_FAILED | FS_CLOSED) or _parse_clean(&ctx.st):
            release_parser_blocks(&ctx.st, self.pool)
            return r
        h = self.pool.acquire_c(sizeof(FrameState))
        if h == 0:
            release_parser_blocks(&ctx.st, self.pool)
            self._fail_conn(s, cid, 1013, E_NOMEM, C_CLOSED_NOMEM)
            return -1
        memcpy(self.pool.ptr(h), &ctx.st, sizeof(FrameState))
        s.pstate = h
        return r

    cdef int _parse_deliver(self, FrameState* st, Slot* s, uint64_t cid, const uint8_t* data,
                            size_t n, uint32_t now) noexcept:
        cdef size_t pos = 0
        cdef int op
        cdef object payload, reply
        cdef const ParserConfig* cfg = &self.ccfg if s.flags & SF_CLIENT else &self.cfg
        while pos < n:
            if s.flags & SF_READ_PAUSED:
                # Keep what was read but not parsed; it is parsed on resume.
                return self._keep_input(s, cid, data + pos, n - pos)
            try:
                payload = parse_next(st, self.pool, cfg, data, n, &pos, &op,
                                     &self.counters[C_FRAMES_IN])
            except BaseException:  # MemoryError creating the payload object
                _log_exception("parse")
                op = -1
                st.error_code = 1011
                st.error_reason = E_NOMEM
            if op == 0:
                return 0
            if op < 0:
                code = st.error_code
                self._fail_conn(s, cid, code, st.error_reason,
                                C_CLOSED_TOO_BIG if code == 1009 else
                                C_CLOSED_NOMEM if code == 1013 else C_CLOSED_PROTOCOL)
                return -1
            if op <= 2:
                if s.flags & SF_CLOSE_SENT:
                    continue  # closing: data after our close frame is dropped
                s.last_message = now
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
                        self._close_c(s, cid, 1011, b"internal error", C_CLOSED_HANDLER_ERROR, now)
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
            # Echo the code (RFC 6455 §5.5.1), then close TCP (a server first; a
            # client does too rather than wait: it has nothing more to read).
            counter = C_CLOSED_PEER
            reply[0] = <uint8_t>(code >> 8)
            reply[1] = <uint8_t>code
            if self._close_frame(s, cid, reply, 0 if code == 1005 else 2) < 0:
                return
        self._finish(s, cid, code, counter)

    cdef void _fail_conn(self, Slot* s, uint64_t cid, int code, int reason, int counter) noexcept:
        """Fail the connection (RFC 6455 §7.1.7): close frame with `code`, then drop.
        `reason`: the E_* error, sent as the close reason and kept for on_event."""
        if counter >= 0:
            self._note_end(s, counter, reason)
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
            self._note_end(s, counter, 0)
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
        cdef const uint8_t* key = NULL
        cdef size_t hl
        cdef ssize_t sent
        s.flags |= SF_CLOSE_SENT
        if s.out_head == 0:
            if s.flags & SF_CLIENT:
                key = next_mask_key()
                if key == NULL:
                    self._drop(s, cid, 1006, -1)
                    return -1
            hl = write_header(frame, 0x88, n, key)
            if key != NULL:
                mask_copy(frame + hl, body, n, key, 0)
            else:
                memcpy(frame + hl, body, n)
            sent = self._try_send(s, frame, hl + n)
            if sent == -1:
                self._drop(s, cid, 1006, C_CLOSED_EOF)
                return -1
            if sent == <ssize_t>(hl + n):
                self.counters[C_FRAMES_OUT] += 1
                return 0
            if sent < 0:
                sent = 0  # would block / sans-I/O: all of it waits in the out chain
            if self._queue(s, cid, frame + sent, hl + n - sent, NULL, 0) < 0:
                return -1
            self.counters[C_FRAMES_OUT] += 1
            return 0
        return self._queue_frame(s, 0x88, body, n)

    cdef void _close_c(self, Slot* s, uint64_t cid, int code, bytes reason, int counter,
                       uint32_t now) noexcept:
        """Start the closing handshake: send close, wait (close_timeout from `now`) for
        the peer's."""
        if s.state != SLOT_OPEN or (s.flags & SF_CLOSE_SENT):
            return
        self.counters[counter] += 1
        self._note_end(s, counter, code)
        if self._close_frame_reason(s, cid, code, reason) < 0:
            return
        s.state = SLOT_CLOSING
        s.ping_sent = now

    cdef inline void _note_end(self, Slot* s, int reason, int detail) noexcept:
        """Record why `s` is ending, for on_event. The first abnormal reason wins (a
        handler error stays the cause when the close then times out); a normal one
        (idle, peer, by_server) only fills an empty record and gives way to an
        abnormal one that follows (an idle close the peer never answers: close timeout)."""
        if s.end_reason == 0 or (not ((_ABNORMAL >> s.end_reason) & 1)
                                 and ((_ABNORMAL >> reason) & 1)):
            s.end_reason = <uint8_t>reason
            s.end_detail = <uint16_t>detail

    cdef void _drop(self, Slot* s, uint64_t cid, int code, int counter) noexcept:
        """End the connection now: free its slot and blocks, release the socket, tell Python."""
        cdef int fd = s.fd
        cdef bint client = s.flags & SF_CLIENT
        cdef bint was_open = client or s.state == SLOT_OPEN or (
            s.state == SLOT_CLOSING and not (s.flags & SF_LINGER))
        cdef int reason
        cdef uint8_t a16[16]
        cdef uint16_t port = s.port
        cdef int ecode = code
        cdef int error = 0
        if counter >= 0:
            self.counters[counter] += 1
            # EOF ends every HTTP exchange and every close: a cause only on an open
            # WebSocket. A refused socket's close timeout is the end of its linger.
            if not ((counter == C_CLOSED_EOF and s.state != SLOT_OPEN)
                    or (counter == C_CLOSED_CLOSE_TIMEOUT and s.flags & SF_LINGER)):
                self._note_end(s, counter, 0)
        reason = s.end_reason
        if reason and self.on_event is not None and (self.event_mask >> reason) & 1:
            memcpy(a16, s.addr, 16)  # the slot is freed before Python hears of it
            if not was_open:
                ecode = s.end_detail  # the status of a refusal the core wrote; else 0
            elif reason == C_CLOSED_PROTOCOL or reason == C_CLOSED_TOO_BIG or reason == C_CLOSED_NOMEM:
                error = s.end_detail  # E_*: which frame rule failed
            elif s.end_detail:
                ecode = s.end_detail  # the code of the close we started (_close_c)
        else:
            reason = 0
        if client:
            self.n_clients -= 1
            if s.state == SLOT_CONNECTING or s.state == SLOT_HANDSHAKE:
                self.counters[C_CLIENT_FAILED] += 1
        elif _http_phase(s.state):
            self.n_pending -= 1
        elif was_open:
            self.n_open -= 1
        self.inflight_total -= s.inflight
        self.table.remove_c(cid)
        self._release_fd(fd)
        if reason:
            self._event(reason, ecode, error, a16, port)
        if was_open:
            if self.on_close is not None:
                try:
                    self.on_close(cid, code)
                except BaseException:
                    _log_exception("on_close")
        elif self.on_http_close is not None:
            try:
                self.on_http_close(cid)
            except BaseException:
                _log_exception("on_http_close")

    cdef void _event(self, int reason, int code, int error, const uint8_t* a16,
                     uint16_t port) noexcept:
        """Report a rare connection event to on_event (see the class docstring)."""
        try:
            self.on_event(reason, code, _REASONS[error] if 0 < error < len(_REASONS) else "",
                          addr_text(a16), port)
        except BaseException:
            _log_exception("on_event")

    # --- output ----------------------------------------------------------------------

    cdef int _queue(self, Slot* s, uint64_t cid, const uint8_t* data, size_t n,
                    const uint8_t* key=NULL, uint32_t off=0) noexcept:
        """Append bytes to the out chain (masked with `key` from offset `off` when
        given) and put the slot on the flush list. Returns -1 when the connection was
        dropped (pool ceiling or slow reader)."""
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
                    if key != NULL:
                        mask_copy(b + OUT_HDR + end, data, take, key, off)
                        off = (off + take) & 3
                    else:
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
        """One frame into the out chain; masked with a fresh key in the client role."""
        cdef uint8_t hdr[MAX_HEADER]
        cdef const uint8_t* key = NULL
        cdef uint64_t cid = _cid(self.table, s)
        cdef uint8_t k[4]
        cdef size_t hl
        if s.flags & SF_CLIENT:
            key = next_mask_key()
            if key == NULL:
                self._drop(s, cid, 1006, -1)
                return -1
            memcpy(k, key, 4)
            key = k
        hl = write_header(hdr, first, n, key)
        if self._queue(s, cid, hdr, hl) < 0:
            return -1
        s = self.table.get(cid)
        if s == NULL:
            return -1
        if n and self._queue(s, cid, payload, n, key, 0) < 0:
            return -1
        self.counters[C_FRAMES_OUT] += 1
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
                    self.counters[C_MESSAGES_OUT] += 1
                # A server stops reading a peer that does not read its replies; a client
                # must keep reading replies while its requests queue (else both sides
                # pause and neither reads: a deadlock).
                if s.out_bytes > self.write_high_water and not (s.flags & SF_CLIENT):
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

    cdef void _written_all(self, Slot* s, uint64_t cid, bint resume) noexcept:
        """The out chain is empty: end a connection that waited for that, else read
        again a connection paused for its output (with `resume`)."""
        if s.flags & SF_DROP_AFTER_WRITE:
            if s.flags & SF_LINGER and self._half_close(s, cid):
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

    cdef bint _half_close(self, Slot* s, uint64_t cid) noexcept:
        """A refused connection's answer is out: shut our side and read until EOF.
        False: no socket to half-close (sans-I/O): drop at once."""
        return False

    # --- interest and pausing -------------------------------------------------------

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
        if not (s.flags & SF_READ_PAUSED) or s.state == SLOT_HTTP_WAIT:
            return  # an HTTP request waiting for its response resumes in respond()
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

    def hold_sends(self):
        """Hold what is sent from now on until ``release_sends()``, which writes it:
        one send() per connection, as at the end of a readiness batch, instead of a
        loop callback to do that on the next turn. Returns False when sends are held
        already (a batch is in progress): then do not call ``release_sends()``."""
        if self.in_batch:
            return False
        self.in_batch = True
        return True

    def release_sends(self):
        """End ``hold_sends()``: write what was queued meanwhile, now."""
        self.in_batch = False
        self._flush_dirty()

    def send_many(self, cids, data, size_t max_queued, bint binary=False):
        """Write the same message to every id in `cids`; the frame is encoded once.
        Server connections only (a client's frames need a mask each). Returns the ids
        not written: gone, closing, client role, or whose pending output would pass
        `max_queued` bytes."""
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
                if s == NULL or s.state != SLOT_OPEN or (s.flags & (SF_CLOSE_SENT | SF_CLIENT)) \
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
                self.counters[C_MESSAGES_OUT] += 1
                self.counters[C_FRAMES_OUT] += 1
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
        """Start the closing handshake with `code` (one RFC 6455 §7.4 allows on the wire,
        else ValueError); a reason over 123 bytes is cut at a UTF-8 character boundary.
        False when the id is stale."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        cdef bytes r = _close_reason(code, reason)
        if s == NULL or s.state != SLOT_OPEN:
            return False
        self._close_c(s, cid, code, r, C_CLOSED_BY_SERVER, monotonic_ms_c())
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

    def set_peer(self, cid, ip, int port=0):
        """Replace the peer address of a server connection still in the HTTP phase (the
        real client behind a trusted proxy: X-Forwarded-For, PROXY protocol), before
        admission counts it per IP. False when `cid` is gone or past that point."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        cdef bytes a = _addr16(ip)
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} is outside 0..65535")
        if s == NULL or (s.flags & (SF_IP_COUNTED | SF_CLIENT)) or not _http_phase(s.state):
            return False
        memcpy(s.addr, PyBytes_AS_STRING(a), 16)
        s.port = <uint16_t>port
        return True

    def state(self, cid):
        """The slot state (SLOT_* in _core.pxd) of `cid`, or None when it is gone."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        return None if s == NULL else s.state

    def connections(self):
        """Ids of every upgraded server connection (for stop() and tests; O(slots ever used))."""
        cdef uint32_t i
        cdef list out = []
        for i in range(self.table.high):
            if self.table.slots[i].state == SLOT_OPEN and not (self.table.slots[i].flags & SF_CLIENT):
                out.append(_cid(self.table, &self.table.slots[i]))
        return out

    # --- sans-I/O entry points ---------------------------------------------------------

    def open_connection(self, ip="127.0.0.1", int port=0, request=None):
        """Add a connection and return its id. Server role (`request` None): it
        starts in the HTTP phase, waiting for a request. Client role: `request` is
        the upgrade request, queued now; the response goes to on_response. Then feed
        receive_data() and pull data_to_send()."""
        cdef bytes a = _addr16(ip)
        cdef int64_t idx
        cdef Slot* s
        cdef uint64_t cid
        cdef uint32_t now = monotonic_ms_c()
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} is outside 0..65535")
        if request is not None and len(request) > self.max_pending_output:
            raise ValueError("the upgrade request is larger than max_pending_output")
        idx = self._new_slot(-1, <const uint8_t*>PyBytes_AS_STRING(a), port, now,
                             request is not None)
        if idx < 0:
            raise TableFull("no slot for a new connection")
        s = &self.table.slots[idx]
        cid = _cid(self.table, s)
        if request is not None:
            if self._feed_request(s, cid, request) < 0:
                raise MemoryError("no pooled block for the upgrade request")
            self.table.get(cid).state = SLOT_HANDSHAKE  # sans-I/O: "connected" at once
        return cid

    cdef int64_t _new_slot(self, int fd, const uint8_t* a16, uint16_t port, uint32_t now,
                           bint client) noexcept:
        """A slot for a new connection in its first state, or -1 (no room)."""
        cdef int64_t idx
        cdef Slot* s
        if client:
            if self.n_clients >= self.max_clients:
                return -1
        elif self.n_pending >= self.max_pending:
            return -1
        idx = self.table.add_c(fd, a16, port, now, False)
        if idx < 0:
            return -1
        s = &self.table.slots[idx]
        s.ping_sent = now  # the handshake timeout counts from here
        if client:
            s.state = SLOT_CONNECTING  # a client (SF_CLIENT) once its request is queued
        else:
            s.state = SLOT_HANDSHAKE
            self.n_pending += 1
        return idx

    cdef int _feed_request(self, Slot* s, uint64_t cid, object request) except -2:
        """Queue a new client slot's upgrade request, then make it a client. On failure
        (pool ceiling) the slot is gone, and no on_close told anyone of an id never
        returned: it was not a client yet."""
        cdef Py_buffer buf
        PyObject_GetBuffer(request, &buf, PyBUF_SIMPLE)
        try:
            if self._queue(s, cid, <const uint8_t*>buf.buf, buf.len) < 0:
                return -1
        finally:
            PyBuffer_Release(&buf)
        s.flags |= SF_CLIENT
        self.n_clients += 1
        return 0

    def receive_data(self, cid, data):
        """Bytes received on `cid` (any size, any split). Callbacks run from here;
        then call data_to_send() for each connection that may answer. Returns False
        when `cid` is gone."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        cdef Parsing* p = self.table.parsing
        if s == NULL:
            return False
        while p != NULL:
            if p.idx == <uint32_t>(s - self.table.slots) and p.gen == s.gen:
                raise RuntimeError("receive_data() for a connection whose bytes are being parsed "
                                   "(called from its own callback)")
            p = p.outer
        if len(data):
            self.in_batch = True
            try:
                self._feed_object(s, cid, data, monotonic_ms_c())
            finally:
                self.in_batch = False
                self._flush_dirty()
        return True

    def receive_eof(self, cid):
        """The peer closed the connection (or the socket failed): the slot is freed."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        if s == NULL:
            return False
        self.eof_c(s, cid)
        return True

    def data_to_send(self, cid):
        """Every byte waiting for `cid`, in order; the out chain is emptied. When the
        connection ends after these bytes (a refusal, a close), `cid` is gone from the
        engine afterwards: write them, then close the socket."""
        cdef Slot* s = self.table.get(cid) if 0 <= cid < 2**64 else NULL
        cdef uint32_t h, start, end
        cdef uint8_t* b
        cdef list parts = []
        if s == NULL:
            return b""
        while s.out_head:
            h = s.out_head
            b = <uint8_t*>self.pool.ptr(h)
            start = (<uint32_t*>b)[1]
            end = (<uint32_t*>b)[2]
            parts.append(PyBytes_FromStringAndSize(<const char*>b + OUT_HDR + start, end - start))
            s.out_head = (<uint32_t*>b)[0]
            self.pool.release_c(h)
        s.out_tail = 0
        self.counters[C_BYTES_OUT] += s.out_bytes
        s.out_bytes = 0
        if s.state == SLOT_CONNECTING:
            s.state = SLOT_HANDSHAKE
        self._written_all(s, cid, True)
        return b"".join(parts)

    def __contains__(self, cid):
        return isinstance(cid, int) and 0 <= cid < 2**64 and self.table.get(cid) != NULL

    # --- housekeeping: one sweep replaces every per-connection timer -----------------

    def sweep(self, uint32_t handshake_timeout_ms=0, uint32_t idle_timeout_ms=0,
              uint32_t ping_interval_ms=0, uint32_t pong_timeout_ms=0,
              uint32_t close_timeout_ms=5000, now=None):
        """One pass over the table: drop handshakes past their timeout (connect, 101,
        HTTP request head or body, keep-alive wait), close idle connections with 1001,
        ping quiet ones, drop those whose ping went unanswered and those whose closing
        handshake timed out. 0 disables a check, except close_timeout_ms (0: drop at
        once). A request waiting for its deferred
        response has no timeout here (the JSON-RPC layer's request timeout bounds it)."""
        cdef uint32_t t = monotonic_ms_c() if now is None else <uint32_t>now
        cdef uint32_t i
        cdef Slot* s
        cdef uint64_t cid
        cdef uint8_t ping_payload[4]
        self.in_batch = True
        try:
            for i in range(self.table.high):
                s = &self.table.slots[i]
                if s.state == SLOT_FREE or s.state == SLOT_HTTP_WAIT:
                    continue
                cid = _cid(self.table, s)
                if s.state == SLOT_HANDSHAKE or s.state == SLOT_UPGRADING or \
                        s.state == SLOT_CONNECTING or s.state == SLOT_HTTP_BODY:
                    if handshake_timeout_ms and elapsed(t, s.ping_sent, handshake_timeout_ms):
                        if s.flags & SF_KEEP_ALIVE and s.state == SLOT_HANDSHAKE and s.in_len == 0:
                            # A kept-alive HTTP connection idle between requests: reaped
                            # like an idle WebSocket, not a failed handshake (for on_event).
                            self.counters[C_HANDSHAKE_TIMEOUT] += 1
                            self._note_end(s, C_CLOSED_IDLE, 0)
                            self._drop(s, cid, 1006, -1)
                        else:
                            self._drop(s, cid, 1006, C_HANDSHAKE_TIMEOUT)
                elif s.state == SLOT_CLOSING:
                    if elapsed(t, s.ping_sent, close_timeout_ms):
                        self._drop(s, cid, 1006, C_CLOSED_CLOSE_TIMEOUT)
                elif idle_timeout_ms and elapsed(t, s.last_message, idle_timeout_ms):
                    self._close_c(s, cid, 1001, b"idle timeout", C_CLOSED_IDLE, t)
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
        """Start the closing handshake on every open connection; drop the others that
        are not closing already (handshakes, HTTP requests, connects)."""
        cdef uint32_t i
        cdef Slot* s
        cdef bytes r = _close_reason(code, reason)
        cdef uint32_t now = monotonic_ms_c()
        self.in_batch = True
        try:
            for i in range(self.table.high):
                s = &self.table.slots[i]
                if s.state == SLOT_FREE or s.state == SLOT_CLOSING:
                    continue
                if s.state == SLOT_OPEN:
                    self._close_c(s, _cid(self.table, s), code, r, C_CLOSED_BY_SERVER, now)
                else:
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

    def state_counts(self):
        """Connections per slot state, server and client role alike: one pass over the
        slots ever used (O(table.high), no allocation per slot; for stats, not per message)."""
        cdef uint32_t n[8]
        cdef uint32_t i
        cdef uint8_t st
        memset(n, 0, sizeof(n))
        for i in range(self.table.high):
            st = self.table.slots[i].state
            if st < 8:
                n[st] += 1
        return {"handshake": n[SLOT_HANDSHAKE], "upgrading": n[SLOT_UPGRADING],
                "open": n[SLOT_OPEN], "closing": n[SLOT_CLOSING],
                "connecting": n[SLOT_CONNECTING], "http_body": n[SLOT_HTTP_BODY],
                "http_wait": n[SLOT_HTTP_WAIT]}

    def memory(self):
        """Bytes of the engine's C arrays: the table's (ConnTable.memory()) and the
        flush list (one uint32 per slot of capacity)."""
        m = self.table.memory()
        m["flush_list_bytes"] = <uint64_t>self.table.capacity * sizeof(uint32_t)
        return m

    def __len__(self):
        return self.table.count

    cdef void _call(self, object fn) noexcept:
        if fn is None:
            return
        try:
            fn()
        except BaseException:
            _log_exception("callback")


cdef bytes _close_reason(int code, object reason):
    """A close frame's reason as bytes of at most 123, cut at a UTF-8 character
    boundary; ValueError for a code that may not be sent (1005, 1006, 1015, ...)."""
    cdef bytes r
    cdef Py_ssize_t cut = 123
    if not (0 <= code <= 0xFFFF and close_code_ok(code)):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
    r = reason.encode() if isinstance(reason, str) else bytes(reason)
    if len(r) <= 123:
        return r
    while cut > 0 and (r[cut] & 0xC0) == 0x80:  # r[cut] continues a character: cut before it
        cut -= 1
    return r[:cut]


cdef void _log_exception(str where) noexcept:
    global _log
    try:
        if _log is None:
            import logging
            _log = logging.getLogger("fastrpc.core")
        _log.exception("error in %s", where)
    except BaseException:
        pass


_HTTP_400 = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\n\r\n"
             b"bad request\n")
_HTTP_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 32\r\n\r\n"
             b"request header fields too large\n")
_HTTP_503 = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\n\r\n"
             b"service unavailable\n")
_HTTP_500 = (b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 22\r\n\r\n"
             b"internal server error\n")
