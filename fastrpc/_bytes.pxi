# Byte kernels: unmasking on machine words, incremental UTF-8 validation.

cdef inline void mask_copy(uint8_t* dst, const uint8_t* src, size_t n,
                           const uint8_t* key, uint32_t off) noexcept nogil:
    """dst[i] = src[i] ^ key[(off + i) % 4]; dst may equal src. 32 bytes per step in
    four independent 64-bit words (the compiler turns them into vector operations)."""
    cdef uint8_t k[8]
    cdef int i
    cdef uint64_t w, a, b, c, d
    cdef size_t pos = 0
    for i in range(8):
        k[i] = key[(off + i) & 3]
    memcpy(&w, k, 8)
    while pos + 32 <= n:
        memcpy(&a, src + pos, 8)
        memcpy(&b, src + pos + 8, 8)
        memcpy(&c, src + pos + 16, 8)
        memcpy(&d, src + pos + 24, 8)
        a ^= w
        b ^= w
        c ^= w
        d ^= w
        memcpy(dst + pos, &a, 8)
        memcpy(dst + pos + 8, &b, 8)
        memcpy(dst + pos + 16, &c, 8)
        memcpy(dst + pos + 24, &d, 8)
        pos += 32
    while pos + 8 <= n:
        memcpy(&a, src + pos, 8)
        a ^= w
        memcpy(dst + pos, &a, 8)
        pos += 8
    while pos < n:
        dst[pos] = src[pos] ^ k[pos & 7]
        pos += 1


# UTF-8 as a small state machine (RFC 3629 §4): the state packs the bytes still
# expected (bits 16-23) and the allowed range of the next byte (low, bits 0-7; high,
# bits 8-15). 0 is "between characters"; UTF8_REJECT is final. Invalid input is found
# at the first byte that cannot continue any valid sequence.
cdef enum:
    UTF8_ACCEPT = 0
    UTF8_REJECT = 0xFFFFFFFF

cdef inline uint32_t _utf8_state(uint32_t need, uint32_t lo, uint32_t hi) noexcept nogil:
    return (need << 16) | (hi << 8) | lo


cdef uint32_t utf8_step(uint32_t state, const uint8_t* p, size_t n) noexcept nogil:
    """Advance `state` over n bytes; returns the new state (UTF8_REJECT on error)."""
    cdef size_t i = 0
    cdef uint64_t w
    cdef uint8_t b
    cdef uint32_t need
    if state == UTF8_REJECT:
        return state
    while i < n:
        if state == UTF8_ACCEPT:
            # ASCII runs, 8 bytes at a time.
            while i + 8 <= n:
                memcpy(&w, p + i, 8)
                if w & 0x8080808080808080ULL:
                    break
                i += 8
            if i >= n:
                break
            b = p[i]
            i += 1
            if b < 0x80:
                continue
            elif b < 0xC2:
                return UTF8_REJECT
            elif b < 0xE0:
                state = _utf8_state(1, 0x80, 0xBF)
            elif b == 0xE0:
                state = _utf8_state(2, 0xA0, 0xBF)
            elif b == 0xED:
                state = _utf8_state(2, 0x80, 0x9F)   # no UTF-16 surrogates
            elif b < 0xF0:
                state = _utf8_state(2, 0x80, 0xBF)
            elif b == 0xF0:
                state = _utf8_state(3, 0x90, 0xBF)   # no overlong 4-byte forms
            elif b < 0xF4:
                state = _utf8_state(3, 0x80, 0xBF)
            elif b == 0xF4:
                state = _utf8_state(3, 0x80, 0x8F)   # nothing above U+10FFFF
            else:
                return UTF8_REJECT
        else:
            b = p[i]
            i += 1
            if b < (state & 0xFF) or b > ((state >> 8) & 0xFF):
                return UTF8_REJECT
            need = (state >> 16) - 1
            state = UTF8_ACCEPT if need == 0 else _utf8_state(need, 0x80, 0xBF)
    return state


def validate_utf8(data):
    cdef Py_buffer buf
    PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
    try:
        return buf.len == 0 or utf8_step(UTF8_ACCEPT, <const uint8_t*>buf.buf, buf.len) == UTF8_ACCEPT
    finally:
        PyBuffer_Release(&buf)


def apply_mask(data, mask):
    cdef Py_buffer buf, key
    cdef bytes out
    PyObject_GetBuffer(mask, &key, PyBUF_SIMPLE)
    try:
        if key.len != 4:
            raise ValueError("mask must be 4 bytes")
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        try:
            out = PyBytes_FromStringAndSize(NULL, buf.len)
            if buf.len:
                mask_copy(<uint8_t*>PyBytes_AS_STRING(out), <const uint8_t*>buf.buf, buf.len,
                          <const uint8_t*>key.buf, 0)
            return out
        finally:
            PyBuffer_Release(&buf)
    finally:
        PyBuffer_Release(&key)
