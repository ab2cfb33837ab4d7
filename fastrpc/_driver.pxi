# Reactor: the epoll I/O driver under the Engine (_engine.pxi). The connection table
# owns the sockets, accepted (server role) and connected (client role) alike; one
# epoll set, registered once with the running event loop (loop.add_reader(epfd)),
# drives them all. Per connection there is a slot and nothing else: no transport,
# protocol, task, timer or loop registration.
#
# Data flow of one readiness batch: epoll_wait → recv() into the shared scratch
# buffer → Engine.feed_c() (parse in place, Python's on_text/on_binary per whole
# message, replies appended to the connection's out chain) → one send()/sendmsg()
# per connection at the end of the batch. Output the socket refuses waits in pooled
# blocks. This file does the syscalls and nothing else.

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

cdef extern from "sys/socket.h" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    int accept4(int fd, sockaddr* addr, socklen_t* addrlen, int flags)
    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr* addr, socklen_t addrlen)
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
        SOCK_STREAM

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
    uint16_t htons(uint16_t)
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
        EINPROGRESS

cdef enum:
    SCRATCH_SIZE = 256 * 1024   # shared read buffer of one reactor (one event loop)
    MAX_EVENTS = 512            # readiness events taken per epoll_wait
    FLUSH_IOV = 64              # out blocks per sendmsg() (far below IOV_MAX)
    READY_ROUNDS = 4            # epoll rounds per loop callback at most (see _on_ready)
    REPOLL_MIN = 4              # ready sockets in a round that make another round worth it
    LISTENER_TAG = 0xFFFFFFFF   # epoll data of a listening socket: tag << 32 | index
                                # (no connection has this generation: see ConnTable.add_c)
    MAX_LISTENERS = 8
    READ_BUDGET = 4             # recv() calls per connection per batch before yielding


@cython.no_gc_clear  # __dealloc__ may run from the cycle collector: keep its fields
cdef class Reactor(Engine):
    """The Engine driving real sockets: the socket-owning core of a server and of
    clients. Python gives it listening sockets (accept) or addresses (connect) and
    the Engine's callbacks; it accepts, connects, reads, parses, writes and times out
    connections itself. ``on_accept_paused()``: accept failed with EMFILE/ENFILE;
    call ``resume_accept()`` later (the server does so after a short delay)."""
    cdef int epfd
    cdef int listeners[MAX_LISTENERS]
    cdef int n_listeners
    cdef bint accept_paused
    cdef uint8_t* scratch
    cdef readonly int last_errno   # errno of the socket error that ended the connection
                                   # being dropped now (0: EOF); read it in on_close

    def __cinit__(self, *args, **kwargs):
        self.epfd = -1
        self.table.owns_fds = True  # the table's slots hold this reactor's sockets
        self.scratch = <uint8_t*>malloc(SCRATCH_SIZE)
        if self.scratch == NULL:
            raise MemoryError()
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")

    def __dealloc__(self):
        free(self.scratch)
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

    @property
    def attached(self):
        return self.loop is not None

    def memory(self):
        """Engine.memory() plus the shared read buffer of this reactor."""
        m = Engine.memory(self)
        m["scratch_bytes"] = SCRATCH_SIZE
        return m

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

    # --- client role: connect -----------------------------------------------------

    def connect(self, ip, int port, request):
        """Open a client connection to `ip` (a numeric IPv4/IPv6 address: resolve
        names first) and `port`, and send `request` (the upgrade request head) once
        connected. Returns the id at once; the connection is SLOT_CONNECTING until
        the request is written, then waits for the response head (on_response).
        A failure to connect ends it with on_close(cid, 1006). Raises TableFull when
        max_clients connections exist, OSError when no socket can be made."""
        cdef bytes a = _addr16(ip)
        cdef const uint8_t* a16 = <const uint8_t*>PyBytes_AS_STRING(a)
        cdef sockaddr_in sin
        cdef sockaddr_in6 sin6
        cdef int fd, one = 1, r
        cdef bint v4 = a[:12] == b"\0" * 10 + b"\xff\xff"
        cdef int64_t idx
        cdef Slot* s
        cdef uint64_t cid
        cdef epoll_event ev
        cdef uint32_t now = monotonic_ms_c()
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"port {port} is outside 1..65535")
        if self.n_clients >= self.max_clients:
            raise TableFull(f"{self.max_clients} client connections already open")
        if len(request) > self.max_pending_output:
            raise ValueError("the upgrade request is larger than max_pending_output")
        fd = socket(AF_INET if v4 else AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            raise OSError(errno, "socket() failed")
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        if v4:
            memset(&sin, 0, sizeof(sin))
            sin.sin_family = AF_INET
            sin.sin_port = htons(<uint16_t>port)
            memcpy(&sin.sin_addr.s_addr, a16 + 12, 4)
            r = connect(fd, <sockaddr*>&sin, sizeof(sin))
        else:
            memset(&sin6, 0, sizeof(sin6))
            sin6.sin6_family = AF_INET6
            sin6.sin6_port = htons(<uint16_t>port)
            memcpy(sin6.sin6_addr.s6_addr, a16, 16)
            r = connect(fd, <sockaddr*>&sin6, sizeof(sin6))
        if r < 0 and errno != EINPROGRESS:
            err = errno
            close(fd)
            raise OSError(err, f"connect to {ip}:{port} failed")
        idx = self._new_slot(fd, a16, <uint16_t>port, now, True)
        if idx < 0:
            close(fd)
            raise TableFull("connection table full")
        s = &self.table.slots[idx]
        cid = _cid(self.table, s)
        ev.events = EPOLLIN | EPOLLRDHUP | EPOLLOUT
        ev.data.u64 = cid
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            err = errno
            self.table.remove_c(cid)
            close(fd)
            raise OSError(err, "epoll_ctl on a client socket failed")
        s.flags |= SF_REG_IN | SF_REG_OUT | SF_WANT_OUT
        if self._feed_request(s, cid, request) < 0:  # the slot and its socket are gone
            raise MemoryError("no pooled block for the upgrade request")
        return cid

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
                    if events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP):
                        if s.flags & SF_REG_IN or events[i].events & (EPOLLHUP | EPOLLERR):
                            self._read(s, tag, now)
                        elif s.state == SLOT_HTTP_WAIT:
                            self.eof_c(s, tag)  # gone while its answer was pending
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
            idx = self._new_slot(fd, a16, port, now, False)
            if idx < 0:
                self.counters[C_PENDING_OVERFLOW] += 1
                close(fd)
                if self.on_event is not None and (self.event_mask >> C_PENDING_OVERFLOW) & 1:
                    self._event(C_PENDING_OVERFLOW, 0, 0, a16, port)
                continue
            s = &self.table.slots[idx]
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            ev.events = EPOLLIN | EPOLLRDHUP
            ev.data.u64 = _cid(self.table, s)
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
                self.n_pending -= 1
                self.table.remove_c(ev.data.u64)
                close(fd)
                continue
            s.flags |= SF_REG_IN

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
                self.last_errno = errno
                self.eof_c(s, cid)
                return
            if got == 0:
                self.last_errno = 0
                self.eof_c(s, cid)
                return
            if self.feed_c(s, cid, self.scratch, got, now) < 0:
                return
            s = self.table.get(cid)
            if s == NULL or not (s.flags & SF_REG_IN) or got < SCRATCH_SIZE:
                return

    # --- the Engine's I/O hooks ------------------------------------------------------

    cdef ssize_t _try_send(self, Slot* s, const uint8_t* p, size_t n) noexcept:
        cdef ssize_t sent
        if s.state == SLOT_CONNECTING:
            return -2
        sent = send(s.fd, p, n, MSG_NOSIGNAL)
        if sent > 0:
            self.counters[C_BYTES_OUT] += sent
            return sent
        if sent < 0 and errno != EAGAIN and errno != EINTR:
            self.last_errno = errno
            return -1
        return -2

    cdef void _release_fd(self, int fd) noexcept:
        if fd >= 0:
            close(fd)  # also leaves the epoll set

    cdef bint _half_close(self, Slot* s, uint64_t cid) noexcept:
        s.flags &= ~SF_WANT_OUT
        self._update_interest(s, cid)
        shutdown(s.fd, SHUT_WR)
        return True

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
                        # (also a client socket still connecting: EPOLLOUT says when)
                        if not (s.flags & SF_WANT_OUT):
                            self.counters[C_WRITE_WAITS] += 1
                        s.flags |= SF_WANT_OUT
                        self._update_interest(s, cid)
                        return
                    self.last_errno = errno
                    if s.state == SLOT_CONNECTING:
                        self._drop(s, cid, 1006, -1)  # connect failed
                    else:
                        self._drop(s, cid, 1006, C_CLOSED_EOF)
                    return
                if s.state == SLOT_CONNECTING:
                    s.state = SLOT_HANDSHAKE  # connected: the request is on its way
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
        self._written_all(s, cid, resume)

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
        # Not reading still watches for the peer leaving while an HTTP answer is
        # pending (EPOLLRDHUP), so the request is abandoned at once.
        ev.events = ((EPOLLIN | EPOLLRDHUP) if want & SF_REG_IN else 0) | \
                    (EPOLLOUT if want & SF_REG_OUT else 0) | \
                    (EPOLLRDHUP if s.state == SLOT_HTTP_WAIT else 0)
        ev.data.u64 = cid
        epoll_ctl(self.epfd, EPOLL_CTL_MOD, s.fd, &ev)
        s.flags = (s.flags & ~(SF_REG_IN | SF_REG_OUT)) | want
