# RFC 6455 §5 frame codec, sans-I/O. parse_next() is the one entry point of the read
# path: it parses from the caller's buffer in place and returns at each event.

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_MAX_FRAGMENTS = 1024
FRAME_STATE_SIZE = sizeof(FrameState)

# Error reasons: FrameState.error_reason indexes _REASONS (short, fixed, safe to send).
cdef enum:
    E_NONE = 0
    E_RSV = 1
    E_OPCODE = 2
    E_UNMASKED = 3
    E_MASKED = 4
    E_CTL_LONG = 5
    E_CTL_FRAG = 6
    E_CONT = 7
    E_NOT_CONT = 8
    E_NONMINIMAL = 9
    E_LEN_MSB = 10
    E_TOO_BIG = 11
    E_FRAGS = 12
    E_UTF8 = 13
    E_CLOSE_LEN = 14
    E_CLOSE_CODE = 15
    E_AFTER_CLOSE = 16
    E_NOMEM = 17

_REASONS = (
    "", "reserved bits set", "reserved opcode", "frame not masked", "frame masked",
    "control frame too long", "fragmented control frame", "unexpected continuation frame",
    "expected continuation frame", "length not minimally encoded", "length over 2^63",
    "message too big", "too many fragments", "invalid UTF-8", "close payload of 1 byte",
    "invalid close code", "data after close frame", "server out of buffer memory",
)


cdef inline bint close_code_ok(uint32_t code) noexcept nogil:
    # RFC 6455 §7.4.1 plus the IANA registry (1012-1014); 1004-1006 and 1015 are
    # reserved and may never appear on the wire.
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


def is_valid_close_code(code):
    return 0 <= code <= 0xFFFF and close_code_ok(code)


cdef inline size_t _header_size(uint8_t b0, uint8_t b1) noexcept nogil:
    cdef size_t n = 2
    cdef uint8_t len7 = b1 & 0x7F
    if len7 == 126:
        n += 2
    elif len7 == 127:
        n += 8
    if b1 & 0x80:
        n += 4
    return n


cdef int _fail(FrameState* st, BufferPool pool, uint16_t code, uint8_t reason) noexcept:
    """Record an error and give back every block the parser holds: a failed
    connection is about to end, and must not pin memory until it does."""
    st.flags |= FS_FAILED
    st.flags &= ~FS_IN_PAYLOAD
    st.error_code = code
    st.error_reason = reason
    release_parser_blocks(st, pool)
    return -1


cdef void release_parser_blocks(FrameState* st, BufferPool pool) noexcept:
    if st.msg_block:
        pool.release_c(st.msg_block)
        st.msg_block = 0
    if st.ctl_block:
        pool.release_c(st.ctl_block)
        st.ctl_block = 0
    st.msg_len = 0
    st.ctl_len = 0


cdef int _read_header(FrameState* st, BufferPool pool, const ParserConfig* cfg,
                      const uint8_t* h) noexcept:
    """Validate one complete header and make it the current frame. Check order (the
    first failing rule decides the code): RSV bits, opcode, masking, length encoding,
    control-frame rules, continuation rules, message size, fragment count."""
    cdef uint8_t b0 = h[0]
    cdef uint8_t b1 = h[1]
    cdef uint8_t opcode = b0 & 0x0F
    cdef uint64_t length = b1 & 0x7F
    cdef size_t p = 2
    cdef int i
    if b0 & 0x70:
        return _fail(st, pool, 1002, E_RSV)
    if (3 <= opcode <= 7) or opcode >= 0xB:
        return _fail(st, pool, 1002, E_OPCODE)
    if cfg.client:
        if b1 & 0x80:
            return _fail(st, pool, 1002, E_MASKED)
    elif not (b1 & 0x80):
        return _fail(st, pool, 1002, E_UNMASKED)
    if length == 126:
        length = (<uint64_t>h[2] << 8) | h[3]
        p = 4
        if length < 126:
            return _fail(st, pool, 1002, E_NONMINIMAL)
    elif length == 127:
        length = 0
        for i in range(8):
            length = (length << 8) | h[2 + i]
        p = 10
        if length >> 63:
            return _fail(st, pool, 1002, E_LEN_MSB)
        if length <= 0xFFFF:
            return _fail(st, pool, 1002, E_NONMINIMAL)
    if opcode >= 8:
        if not (b0 & 0x80):
            return _fail(st, pool, 1002, E_CTL_FRAG)
        if length > 125:
            return _fail(st, pool, 1002, E_CTL_LONG)
    else:
        if opcode == 0:
            if st.msg_op == 0:
                return _fail(st, pool, 1002, E_CONT)
        elif st.msg_op != 0:
            return _fail(st, pool, 1002, E_NOT_CONT)
        # Limits before buffering: decided from the length field alone.
        if length > <uint64_t>(cfg.max_message_size - st.msg_len):
            return _fail(st, pool, 1009, E_TOO_BIG)
        if st.fragments >= cfg.max_fragments:
            return _fail(st, pool, 1009, E_FRAGS)
        st.fragments += 1
        if opcode != 0:
            st.msg_op = opcode
    if b1 & 0x80:
        memcpy(st.mask_key, h + p, 4)
        st.flags |= FS_MASKED
    else:
        st.flags &= ~FS_MASKED
    if b0 & 0x80:
        st.flags |= FS_FIN
    else:
        st.flags &= ~FS_FIN
    st.cur_op = opcode
    st.remaining = <uint32_t>length
    st.mask_off = 0
    st.flags |= FS_IN_PAYLOAD
    return 0


cdef inline void _unmask_into(FrameState* st, uint8_t* dst, const uint8_t* src, size_t n) noexcept:
    if st.flags & FS_MASKED:
        mask_copy(dst, src, n, st.mask_key, st.mask_off)
        st.mask_off = (st.mask_off + n) & 3
    else:
        memcpy(dst, src, n)


cdef int _check_close(FrameState* st, BufferPool pool, const uint8_t* p, size_t n) noexcept:
    cdef uint32_t code
    if n == 1:
        return _fail(st, pool, 1002, E_CLOSE_LEN)
    if n >= 2:
        code = (<uint32_t>p[0] << 8) | p[1]
        if not close_code_ok(code):
            return _fail(st, pool, 1002, E_CLOSE_CODE)
        if n > 2 and utf8_step(UTF8_ACCEPT, p + 2, n - 2) != UTF8_ACCEPT:
            return _fail(st, pool, 1007, E_UTF8)
    st.flags |= FS_CLOSED
    # The connection is ending: a fragmented message left open will never complete.
    release_parser_blocks(st, pool)
    return 0


cdef object parse_next(FrameState* st, BufferPool pool, const ParserConfig* cfg,
                       const uint8_t* data, size_t n, size_t* pos_p, int* op_p,
                       uint64_t* frames):
    """Parse data[pos_p[0]:n] until one event completes; frames[0] is incremented for
    every frame header read and accepted (data, continuation and control frames).

    Returns the event's payload (bytes) with op_p[0] set to its opcode; or None with
    op_p[0] == 0 once every byte is consumed; or None with op_p[0] == -1 on a protocol
    error (st.error_code / st.error_reason say which; the parser holds no block then).
    pos_p[0] is advanced past the bytes consumed. The caller calls again while
    op_p[0] > 0 and bytes remain. Never raises except MemoryError from Python."""
    cdef size_t pos = pos_p[0]
    cdef size_t need, take, avail
    cdef const uint8_t* h
    cdef uint8_t* dst
    cdef uint32_t nh
    cdef int op
    cdef object payload
    op_p[0] = 0
    if st.flags & FS_FAILED:
        op_p[0] = -1
        return None
    while True:
        if not (st.flags & FS_IN_PAYLOAD):
            if pos >= n:
                break
            if st.flags & FS_CLOSED:
                _fail(st, pool, 1002, E_AFTER_CLOSE)
                op_p[0] = -1
                break
            if st.hdr_len == 0 and n - pos >= 2 and n - pos >= _header_size(data[pos], data[pos + 1]):
                h = data + pos
                pos += _header_size(data[pos], data[pos + 1])
            else:
                # A header split across reads: gather it in the state (<= 14 bytes).
                while st.hdr_len < 2 and pos < n:
                    st.hdr[st.hdr_len] = data[pos]
                    st.hdr_len += 1
                    pos += 1
                if st.hdr_len < 2:
                    break
                need = _header_size(st.hdr[0], st.hdr[1])
                take = min(need - st.hdr_len, n - pos)
                memcpy(st.hdr + st.hdr_len, data + pos, take)
                st.hdr_len += take
                pos += take
                if st.hdr_len < need:
                    break
                h = st.hdr
                st.hdr_len = 0
            if _read_header(st, pool, cfg, h) < 0:
                op_p[0] = -1
                break
            frames[0] += 1
            avail = n - pos
            # Fast paths: the whole payload is here and nothing is buffered. One copy,
            # straight from the caller's buffer into the bytes object handed out.
            if st.remaining <= avail:
                if st.cur_op >= 8 and st.ctl_len == 0:
                    payload = PyBytes_FromStringAndSize(NULL, st.remaining)
                    dst = <uint8_t*>PyBytes_AS_STRING(payload)
                    _unmask_into(st, dst, data + pos, st.remaining)
                    pos += st.remaining
                    st.remaining = 0
                    st.flags &= ~FS_IN_PAYLOAD
                    op = st.cur_op
                    if op == 8 and _check_close(st, pool, dst, len(payload)) < 0:
                        op_p[0] = -1
                        break
                    op_p[0] = op
                    pos_p[0] = pos
                    return payload
                if st.cur_op != 0 and (st.flags & FS_FIN) and st.msg_block == 0:
                    payload = PyBytes_FromStringAndSize(NULL, st.remaining)
                    dst = <uint8_t*>PyBytes_AS_STRING(payload)
                    _unmask_into(st, dst, data + pos, st.remaining)
                    pos += st.remaining
                    st.flags &= ~FS_IN_PAYLOAD
                    op = st.msg_op
                    st.msg_op = 0
                    st.fragments = 0
                    if op == 1 and utf8_step(UTF8_ACCEPT, dst, st.remaining) != UTF8_ACCEPT:
                        st.remaining = 0
                        _fail(st, pool, 1007, E_UTF8)
                        op_p[0] = -1
                        break
                    st.remaining = 0
                    op_p[0] = op
                    pos_p[0] = pos
                    return payload
            # Slow path: borrow a block sized from the length field, so the payload
            # bytes that follow are copied once and never reallocated mid-frame.
            if st.cur_op >= 8:
                if st.ctl_block == 0:
                    st.ctl_block = pool.acquire_c(125)
                    if st.ctl_block == 0:
                        _fail(st, pool, 1013, E_NOMEM)
                        op_p[0] = -1
                        break
            elif st.msg_len + st.remaining > 0:
                nh = pool.grow_c(st.msg_block, st.msg_len, st.msg_len + st.remaining)
                if nh == 0:
                    _fail(st, pool, 1013, E_NOMEM)
                    op_p[0] = -1
                    break
                st.msg_block = nh
        # Payload bytes of the current frame.
        avail = min(<size_t>st.remaining, n - pos)
        if st.cur_op >= 8:
            if avail:
                _unmask_into(st, <uint8_t*>pool.ptr(st.ctl_block) + st.ctl_len, data + pos, avail)
                st.ctl_len += avail
        elif avail:
            dst = <uint8_t*>pool.ptr(st.msg_block) + st.msg_len
            _unmask_into(st, dst, data + pos, avail)
            st.msg_len += avail
            if st.msg_op == 1:
                # Incremental: a text message fails at its first invalid byte.
                st.utf8_state = utf8_step(st.utf8_state, dst, avail)
                if st.utf8_state == UTF8_REJECT:
                    pos += avail
                    _fail(st, pool, 1007, E_UTF8)
                    op_p[0] = -1
                    break
        pos += avail
        st.remaining -= avail
        if st.remaining:
            break  # every byte consumed; the frame continues in the next read
        st.flags &= ~FS_IN_PAYLOAD
        if st.cur_op >= 8:
            op = st.cur_op
            if st.ctl_block:
                payload = PyBytes_FromStringAndSize(pool.ptr(st.ctl_block), st.ctl_len)
                pool.release_c(st.ctl_block)
                st.ctl_block = 0
            else:
                payload = b""
            st.ctl_len = 0
            if op == 8 and _check_close(st, pool, <const uint8_t*>PyBytes_AS_STRING(payload), len(payload)) < 0:
                op_p[0] = -1
                break
            op_p[0] = op
            pos_p[0] = pos
            return payload
        if not (st.flags & FS_FIN):
            continue
        # The last frame of a message: hand it out and give the block back at once.
        op = st.msg_op
        if op == 1 and st.utf8_state != UTF8_ACCEPT:
            _fail(st, pool, 1007, E_UTF8)
            op_p[0] = -1
            break
        if st.msg_block:
            payload = PyBytes_FromStringAndSize(pool.ptr(st.msg_block), st.msg_len)
            pool.release_c(st.msg_block)
            st.msg_block = 0
        else:
            payload = b""
        st.msg_len = 0
        st.msg_op = 0
        st.fragments = 0
        st.utf8_state = UTF8_ACCEPT
        op_p[0] = op
        pos_p[0] = pos
        return payload
    pos_p[0] = pos
    return None


cdef object protocol_error(FrameState* st):
    return ProtocolError(st.error_code, _REASONS[st.error_reason])


cdef void init_config(ParserConfig* cfg, bint client, size_t max_message_size,
                      size_t max_fragments) except *:
    if max_message_size < 1 or max_message_size >= 2**31:
        raise ValueError("max_message_size must be between 1 byte and 2 GiB")
    if max_fragments < 1 or max_fragments > 0xFFFFFFFF:
        raise ValueError("max_fragments must be between 1 and 2**32 - 1")
    cfg.client = client
    cfg.max_message_size = <uint32_t>max_message_size
    cfg.max_fragments = <uint32_t>max_fragments


cdef int check_pool(BufferPool pool, size_t max_message_size) except -1:
    cdef uint32_t largest = pool.classes[pool.n_classes - 1].block_size
    if max_message_size > largest:
        raise ValueError("max_message_size is over the pool's largest block")
    if largest < 125:
        raise ValueError("the pool's largest block must hold a control frame (125 bytes)")
    return 0


cdef class FrameParser:
    def __cinit__(self, BufferPool pool not None, *, bint client=False,
                  size_t max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                  size_t max_fragments=DEFAULT_MAX_FRAGMENTS):
        memset(&self.st, 0, sizeof(FrameState))
        init_config(&self.cfg, client, max_message_size, max_fragments)
        check_pool(pool, max_message_size)
        self.pool = pool

    def __dealloc__(self):
        if self.pool is not None:
            release_parser_blocks(&self.st, self.pool)

    def feed(self, data):
        cdef Py_buffer buf
        cdef size_t pos = 0
        cdef int op = 0
        cdef list events = []
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        try:
            while True:
                payload = parse_next(&self.st, self.pool, &self.cfg,
                                     <const uint8_t*>buf.buf, <size_t>buf.len, &pos, &op,
                                     &self.frames)
                if op > 0:
                    events.append((op, payload))
                    continue
                if op < 0:
                    err = protocol_error(&self.st)
                    err.events = events
                    raise err
                return events
        finally:
            PyBuffer_Release(&buf)

    @property
    def buffered(self):
        cdef size_t n = 0
        if self.st.msg_block:
            n += self.pool.capacity_of(self.st.msg_block)
        if self.st.ctl_block:
            n += self.pool.capacity_of(self.st.ctl_block)
        return n

    @property
    def closed(self):
        return bool(self.st.flags & (FS_FAILED | FS_CLOSED))

    def close(self):
        release_parser_blocks(&self.st, self.pool)
        self.st.flags |= FS_CLOSED


# --- Encoder ---------------------------------------------------------------------------

cdef uint8_t _keys[4096]
cdef size_t _keys_pos = sizeof(_keys)


cdef void _forget_keys() noexcept nogil:
    # After fork() parent and child hold the same unused keys: the child draws anew.
    global _keys_pos
    _keys_pos = sizeof(_keys)


cdef extern from "pthread.h" nogil:
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

pthread_atfork(NULL, NULL, _forget_keys)


cdef const uint8_t* next_mask_key() noexcept:
    """4 bytes from the OS's strong random source, drawn 4 KiB at a time (fresh in a
    forked child). NULL if the source fails (errno says why): the caller must not
    send an unmasked client frame then."""
    global _keys_pos
    cdef ssize_t got
    cdef size_t filled = 0
    if _keys_pos + 4 > sizeof(_keys):
        while filled < sizeof(_keys):
            got = getrandom(_keys + filled, sizeof(_keys) - filled, 0)
            if got < 0:
                if errno == EINTR:
                    continue
                return NULL
            filled += got
        _keys_pos = 0
    _keys_pos += 4
    return _keys + _keys_pos - 4


def _mask_keys_left():
    """Keys still unused in this process's buffer (tests: a forked child has none)."""
    return (sizeof(_keys) - _keys_pos) // 4


cdef inline size_t write_header(uint8_t* out, uint8_t first, size_t n,
                                const uint8_t* mask) noexcept nogil:
    """Frame header into out (>= 14 bytes): `first` is FIN|RSV|opcode."""
    cdef size_t p
    cdef uint8_t mbit = 0x80 if mask != NULL else 0
    cdef int i
    out[0] = first
    if n < 126:
        out[1] = mbit | <uint8_t>n
        p = 2
    elif n <= 0xFFFF:
        out[1] = mbit | 126
        out[2] = <uint8_t>(n >> 8)
        out[3] = <uint8_t>n
        p = 4
    else:
        out[1] = mbit | 127
        for i in range(8):
            out[2 + i] = <uint8_t>(n >> (56 - 8 * i))
        p = 10
    if mask != NULL:
        memcpy(out + p, mask, 4)
        p += 4
    return p


cdef bytes build_frame(uint8_t first, const uint8_t* payload, size_t n, bint mask):
    cdef const uint8_t* key = next_mask_key() if mask else NULL
    cdef uint8_t hdr[MAX_HEADER]
    if mask and key == NULL:
        raise OSError(errno, "getrandom failed")
    cdef size_t hl = write_header(hdr, first, n, key)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hl + n)
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(o, hdr, hl)
    if n:
        if mask:
            mask_copy(o + hl, payload, n, key, 0)
        else:
            memcpy(o + hl, payload, n)
    return out


def encode_frame(int opcode, payload=b"", *, bint fin=True, bint mask=False, int rsv=0):
    cdef Py_buffer buf
    if not 0 <= opcode <= 15:
        raise ValueError("opcode must be 0..15")
    if not 0 <= rsv <= 7:
        raise ValueError("rsv must be 0..7")
    PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
    try:
        return build_frame((0x80 if fin else 0) | (rsv << 4) | opcode,
                           <const uint8_t*>buf.buf, buf.len, mask)
    finally:
        PyBuffer_Release(&buf)


def encode_close(code=1000, reason=b"", *, bint mask=False):
    if isinstance(reason, str):
        reason = reason.encode()
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return build_frame(0x88, NULL, 0, mask)
    if not (0 <= code <= 0xFFFF and close_code_ok(code)):
        raise ValueError(f"close code {code} may not be sent")
    body = bytes((code >> 8, code & 0xFF)) + bytes(reason)
    if len(body) > 125:
        raise ValueError("close reason too long (over 123 bytes)")
    return build_frame(0x88, <const uint8_t*>PyBytes_AS_STRING(body), len(body), mask)


def encode_ping(payload=b"", *, bint mask=False):
    if len(payload) > 125:
        raise ValueError("control payload over 125 bytes")
    return encode_frame(0x9, payload, mask=mask)


def encode_pong(payload=b"", *, bint mask=False):
    if len(payload) > 125:
        raise ValueError("control payload over 125 bytes")
    return encode_frame(0xA, payload, mask=mask)


def parse_close(payload):
    data = bytes(payload)
    if len(data) == 0:
        return (1005, "")
    if len(data) == 1:
        raise ProtocolError(1002, _REASONS[E_CLOSE_LEN])
    code = (data[0] << 8) | data[1]
    if not close_code_ok(<uint32_t>code):
        raise ProtocolError(1002, _REASONS[E_CLOSE_CODE])
    try:
        return (code, data[2:].decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError(1007, _REASONS[E_UTF8]) from None
