# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The measured loop of ``loadgen.py``, compiled: the same steps as
``Generator._run_one`` / ``_run_many`` (read, cut frames, look each reply up in the
dict of replies already validated, record its latency, send the next requests), with
no interpreter work per request.

Why: in the 64-connection scenario both processes do the same kernel work per request
(one ``send`` that also delivers the bytes to the peer over loopback, one ``recv``,
a share of ``epoll_wait``), so the client's interpreter time decides who sets the
pace. A Python client (about 2 µs of its own per request here) is slower than a
server that does less than that, and such a server fills its slack with smaller
batches instead of sleeping: its CPU per request then tracks the client's, not its
own work. A client that costs less than the servers it measures keeps the
measurement on the server.

Everything that is not per request stays in Python and is shared with the Python
loop: connecting, the handshake, the first requests, validating a reply never seen
before (``Generator.validate``), errors (``Generator.error`` / ``_fail``), pings, and
the drain after the measured window. State moves in and out through the ``Conn``
objects, so ``_drain`` sees the same fields either way.
"""
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy
from libc.errno cimport errno, EINTR
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject


cdef extern from "sys/epoll.h" nogil:
    ctypedef union epoll_data_t:
        int fd
        unsigned long long u64
    struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CLOEXEC

cdef extern from "sys/socket.h" nogil:
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)

cdef extern from "unistd.h" nogil:
    int close(int fd)

DEF RECV_SIZE = 65536
DEF TAIL_MAX = 65536      # an incomplete frame longer than this: not a JSON-RPC reply
DEF MAX_EVENTS = 256
DEF POLL_MS = 200

cdef struct CConn:
    int fd
    bint closed
    long next             # the id the next request uses
    long inflight
    int64_t* sent_at      # [ring + 1]: monotonic ns when sent; 0 = not in flight
    const char** frame    # [ring + 1]: the masked request frame for an id
    Py_ssize_t* frame_len
    char* tail            # bytes of an incomplete frame from the last read
    Py_ssize_t tail_len


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # the clock of time.monotonic_ns()
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class Loop:
    """One measured run over ``gen.conns``; ``run(t_start, t_end)`` then ``close()``."""

    cdef object gen
    cdef object Failure      # loadgen.Failure: ends one connection, through gen._fail
    cdef list conns
    cdef dict known
    cdef CConn* cc
    cdef Py_ssize_t n
    cdef long ring
    cdef char* buf           # tail + one read
    cdef char* out           # the frames of one send
    cdef Py_ssize_t out_cap
    cdef int64_t* lat
    cdef Py_ssize_t lat_len, lat_cap
    cdef long long answered, received, sent  # handed to the generator by close()

    def __cinit__(self, gen):
        cdef Py_ssize_t i, r
        cdef CConn* c
        self.gen = gen
        self.Failure = gen.Failure
        self.conns = [x for x in gen.conns if not x.closed]
        self.known = gen.known
        self.ring = gen.ring
        self.n = len(self.conns)
        self.cc = <CConn*>calloc(max(self.n, 1), sizeof(CConn))  # NULL pointers until filled
        self.buf = <char*>malloc(TAIL_MAX + RECV_SIZE)
        self.out_cap = 4096
        self.out = <char*>malloc(self.out_cap)
        self.lat_cap = 1 << 20
        self.lat = <int64_t*>malloc(self.lat_cap * sizeof(int64_t))
        if self.cc == NULL or self.buf == NULL or self.out == NULL or self.lat == NULL:
            raise MemoryError()
        for i in range(self.n):
            py = self.conns[i]
            c = &self.cc[i]
            c.fd = py.fd
            c.closed = False
            c.next = py.next
            c.inflight = py.inflight
            c.sent_at = <int64_t*>malloc((self.ring + 1) * sizeof(int64_t))
            c.frame = <const char**>malloc((self.ring + 1) * sizeof(char*))
            c.frame_len = <Py_ssize_t*>malloc((self.ring + 1) * sizeof(Py_ssize_t))
            c.tail = <char*>malloc(TAIL_MAX)
            if c.sent_at == NULL or c.frame == NULL or c.frame_len == NULL or c.tail == NULL:
                raise MemoryError()
            for r in range(self.ring + 1):
                c.sent_at[r] = py.sent_at[r]
                f = py.frames[r]   # bytes kept alive by py.frames
                c.frame[r] = PyBytes_AS_STRING(f)
                c.frame_len[r] = PyBytes_GET_SIZE(f)
            t = py.tail
            if len(t) > TAIL_MAX:
                raise ValueError("tail too long")
            memcpy(c.tail, PyBytes_AS_STRING(t), len(t))
            c.tail_len = len(t)

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.cc != NULL:
            for i in range(self.n):
                free(self.cc[i].sent_at)
                free(self.cc[i].frame)
                free(self.cc[i].frame_len)
                free(self.cc[i].tail)
            free(self.cc)
        free(self.buf)
        free(self.out)
        free(self.lat)

    def close(self):
        """Hand the state back to the Conn objects and the generator."""
        cdef Py_ssize_t i, r
        cdef CConn* c
        for i in range(self.n):
            c = &self.cc[i]
            py = self.conns[i]
            if py.closed:
                continue
            py.next = c.next
            py.inflight = c.inflight
            for r in range(self.ring + 1):
                py.sent_at[r] = c.sent_at[r]
            py.tail = PyBytes_FromStringAndSize(c.tail, c.tail_len)
        self.gen.answered += self.answered
        self.gen.received += self.received
        self.gen.sent += self.sent
        if self.lat_len:
            self.gen.latencies.frombytes(
                PyBytes_FromStringAndSize(<char*>self.lat, self.lat_len * sizeof(int64_t)))
        self.lat_len = 0
        self.answered = self.received = self.sent = 0

    # -- one connection's steps ---------------------------------------------------------

    cdef int record(self, int64_t v) except -1:
        cdef int64_t* p
        if self.lat_len == self.lat_cap:
            p = <int64_t*>realloc(self.lat, 2 * self.lat_cap * sizeof(int64_t))
            if p == NULL:
                raise MemoryError()
            self.lat = p
            self.lat_cap *= 2
        self.lat[self.lat_len] = v
        self.lat_len += 1
        return 0

    cdef long reply(self, CConn* c, const char* p, Py_ssize_t n, int64_t now,
                    bint in_window) except -1:
        """Account for one reply payload; 1 if it answered a request in flight."""
        cdef object payload = PyBytes_FromStringAndSize(p, n)
        cdef PyObject* hit = PyDict_GetItem(self.known, payload)
        cdef long rid
        cdef int64_t t
        if hit != NULL:
            rid = <long><object>hit
        else:
            got = self.gen.validate(payload)
            if got is None:
                return 0
            rid = got
        t = c.sent_at[rid]
        if t == 0:
            self.gen.error(f"reply to id {rid}, which is not in flight")
            return 0
        c.sent_at[rid] = 0
        if in_window:
            self.record(now - t)
        return 1

    cdef long on_data(self, Py_ssize_t i, Py_ssize_t got, int64_t now, int64_t t_start,
                      int64_t t_end) except -1:
        """Cut the frames out of c.tail + the bytes just read (already in self.buf after
        the tail); how many requests they answered."""
        cdef CConn* c = &self.cc[i]
        cdef const uint8_t* d = <const uint8_t*>self.buf
        cdef Py_ssize_t pos = 0, end, h, ln, total = c.tail_len + got
        cdef uint8_t b0, b1
        cdef long done = 0
        cdef bint in_window = t_start <= now < t_end
        if got == 0:
            raise self.Failure("server closed the TCP connection")
        while total - pos >= 2:
            b0 = d[pos]
            b1 = d[pos + 1]
            if b1 & 0x80:
                raise self.Failure("server sent a masked frame")
            ln = b1
            h = 2
            if ln == 126:
                if total - pos < 4:
                    break
                ln = (<Py_ssize_t>d[pos + 2] << 8) | d[pos + 3]
                h = 4
            elif ln == 127:
                if total - pos < 10:
                    break
                ln = 0
                for h in range(2, 10):
                    ln = (ln << 8) | d[pos + h]
                h = 10
            end = pos + h + ln
            if end > total:
                break
            if b0 == 0x81:
                done += self.reply(c, <const char*>d + pos + h, ln, now, in_window)
            else:  # ping, pong, close or a stray frame: the Python half decides (rare)
                self.gen.control(self.conns[i], b0,
                                 PyBytes_FromStringAndSize(<const char*>d + pos + h, ln))
            pos = end
        if total - pos > TAIL_MAX:
            raise self.Failure("a frame longer than 64 KiB: not a reply to these requests")
        c.tail_len = total - pos
        memcpy(c.tail, d + pos, c.tail_len)
        c.inflight -= done
        self.received += done
        if in_window:
            self.answered += done
        return done

    cdef int send_next(self, Py_ssize_t i, long k, int64_t now) except -1:
        cdef CConn* c = &self.cc[i]
        cdef long rid = c.next, j
        cdef Py_ssize_t size = 0, off = 0
        cdef ssize_t w
        cdef char* p
        for j in range(k):
            if c.sent_at[rid]:
                raise self.Failure(f"id {rid} still unanswered after a full ring of {self.ring} requests")
            c.sent_at[rid] = now
            if size + c.frame_len[rid] > self.out_cap:
                p = <char*>realloc(self.out, 2 * (size + c.frame_len[rid]))
                if p == NULL:
                    raise MemoryError()
                self.out = p
                self.out_cap = 2 * (size + c.frame_len[rid])
            memcpy(self.out + size, c.frame[rid], c.frame_len[rid])
            size += c.frame_len[rid]
            rid = rid + 1 if rid < self.ring else 1
        c.next = rid
        c.inflight += k
        self.sent += k
        while off < size:  # a blocking socket: a few hundred bytes never wait long
            w = send(c.fd, self.out + off, size - off, 0)
            if w < 0:
                if errno == EINTR:
                    continue
                raise OSError(errno, "send failed")
            off += w
        return 0

    cdef Py_ssize_t read(self, Py_ssize_t i) except -1:
        """recv() one chunk after the connection's tail (moved into self.buf)."""
        cdef CConn* c = &self.cc[i]
        cdef ssize_t got
        memcpy(self.buf, c.tail, c.tail_len)
        while True:
            got = recv(c.fd, self.buf + c.tail_len, RECV_SIZE, 0)
            if got >= 0:
                return got
            if errno != EINTR:
                raise OSError(errno, "recv failed")

    cdef void fail(self, Py_ssize_t i, e) except *:
        self.cc[i].closed = True
        self.cc[i].inflight = 0
        self.gen._fail(self.conns[i], e)

    # -- the loops ---------------------------------------------------------------------

    def run(self, int64_t t_start, int64_t t_end):
        if self.n == 1:
            self.run_one(t_start, t_end)
        elif self.n > 1:
            self.run_many(t_start, t_end)

    cdef run_one(self, int64_t t_start, int64_t t_end):
        cdef Py_ssize_t got
        cdef long k
        cdef int64_t now
        try:
            while True:
                got = self.read(0)
                now = now_ns()
                k = self.on_data(0, got, now, t_start, t_end)
                if now >= t_end:
                    return
                if k:
                    self.send_next(0, k, now)
        except (self.Failure, OSError) as e:
            self.fail(0, e)

    cdef run_many(self, int64_t t_start, int64_t t_end):
        cdef epoll_event ev
        cdef epoll_event events[MAX_EVENTS]
        cdef int ep = epoll_create1(EPOLL_CLOEXEC), m, j
        cdef Py_ssize_t i, got, live = 0
        cdef long k
        cdef int64_t now
        if ep < 0:
            raise OSError(errno, "epoll_create1 failed")
        try:
            for i in range(self.n):
                ev.events = EPOLLIN
                ev.data.u64 = <unsigned long long>i
                if epoll_ctl(ep, EPOLL_CTL_ADD, self.cc[i].fd, &ev) < 0:
                    raise OSError(errno, "epoll_ctl failed")
                live += 1
            while live:
                m = epoll_wait(ep, events, MAX_EVENTS, POLL_MS)
                if m < 0:
                    if errno == EINTR:
                        continue
                    raise OSError(errno, "epoll_wait failed")
                now = now_ns()
                if now >= t_end:
                    return
                for j in range(m):
                    i = <Py_ssize_t>events[j].data.u64
                    if self.cc[i].closed:
                        continue
                    try:
                        got = self.read(i)
                        k = self.on_data(i, got, now, t_start, t_end)
                        if k:
                            self.send_next(i, k, now)
                    except (self.Failure, OSError) as e:
                        self.fail(i, e)  # closes the socket: epoll forgets it
                        live -= 1
        finally:
            close(ep)
