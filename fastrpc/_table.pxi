# ConnTable: connection slots in one C array, a free list, per-IP counts, the idle scan.

SLOT_SIZE = sizeof(Slot)


cdef inline uint32_t monotonic_ms_c() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint32_t>(<uint64_t>ts.tv_sec * 1000 + <uint64_t>ts.tv_nsec // 1000000)


def monotonic_ms():
    return monotonic_ms_c()


cdef inline bint elapsed(uint32_t now, uint32_t since, uint32_t timeout) noexcept nogil:
    # Wrap-safe: the difference of two uint32 stamps is right across the 49.7-day wrap.
    return <uint32_t>(now - since) >= timeout


cdef inline uint32_t _ip_hash(const uint8_t* a) noexcept nogil:
    # FNV-1a over the 16 bytes, then a final mix: cheap and well spread for addresses.
    cdef uint32_t h = 2166136261u
    cdef int i
    for i in range(16):
        h = (h ^ a[i]) * 16777619u
    h ^= h >> 15
    h *= 0x2c1b3c6du
    h ^= h >> 12
    return h


cdef bytes _addr16(object ip):
    """An address (text, or packed 4 / 16 bytes) in its 16-byte IPv6-mapped form."""
    if isinstance(ip, str):
        try:
            packed = _socket.inet_pton(_socket.AF_INET, ip)
        except OSError:
            try:
                packed = _socket.inet_pton(_socket.AF_INET6, ip)
            except OSError:
                raise ValueError(f"not an IP address: {ip!r}") from None
    else:
        packed = bytes(ip)
    if len(packed) == 4:
        return b"\0" * 10 + b"\xff\xff" + packed
    if len(packed) == 16:
        return packed
    raise ValueError("a packed address has 4 or 16 bytes")


cdef str addr_text(const uint8_t* a):
    cdef bytes raw = PyBytes_FromStringAndSize(<const char*>a, 16)
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return _socket.inet_ntop(_socket.AF_INET, raw[12:])
    return _socket.inet_ntop(_socket.AF_INET6, raw)


@cython.no_gc_clear  # __dealloc__ needs the pool to give the slots' blocks back
cdef class ConnTable:
    def __cinit__(self, uint32_t capacity, uint32_t max_per_ip=256, BufferPool pool=None):
        cdef uint32_t i, size = 16
        if capacity < 1 or capacity > (1 << 24):
            raise ValueError("capacity must be between 1 and 16,777,216")
        if max_per_ip < 1:
            raise ValueError("max_per_ip must be >= 1")
        self.capacity = capacity
        self.max_per_ip = max_per_ip
        self.pool = pool if pool is not None else BufferPool()
        # calloc: pages of slots never used are never touched, so they cost no RSS.
        self.slots = <Slot*>calloc(capacity, sizeof(Slot))
        while size < 2 * capacity:
            size <<= 1
        self.ips_tab = <IPEntry*>calloc(size, sizeof(IPEntry))
        self.ips_mask = size - 1
        if self.slots == NULL or self.ips_tab == NULL:
            raise MemoryError()
        # Free list threaded lazily through in_block (unused while a slot is free): a
        # never-used slot (gen 0) means "the slot after me", so building the list
        # touches no page up front.
        self.free_head = 0
        self.count = 0
        self.n_ips = 0

    def __dealloc__(self):
        cdef uint32_t i
        if self.slots != NULL:
            if self.count and self.pool is not None:
                for i in range(self.high):
                    if self.slots[i].state != SLOT_FREE:
                        self.free_blocks(&self.slots[i])
                        if self.owns_fds:
                            # Dropped without stop(): the sockets must not outlive it.
                            close(self.slots[i].fd)
            free(self.slots)
        free(self.ips_tab)

    # --- per-IP counts: open addressing, linear probing, backward-shift deletion ------

    cdef uint32_t ip_find(self, const uint8_t* a) noexcept:
        """Index of the entry for `a`, or of the empty entry where it would go."""
        cdef uint32_t i = _ip_hash(a) & self.ips_mask
        while self.ips_tab[i].count and memcmp(self.ips_tab[i].addr, a, 16) != 0:
            i = (i + 1) & self.ips_mask
        return i

    cdef void _ip_dec(self, const uint8_t* a) noexcept:
        cdef uint32_t i = self.ip_find(a)
        cdef uint32_t j, k
        if self.ips_tab[i].count == 0:
            return
        self.ips_tab[i].count -= 1
        if self.ips_tab[i].count:
            return
        self.n_ips -= 1
        # Backward-shift: pull later entries of the probe run into the hole so lookups
        # never need tombstones.
        j = i
        while True:
            j = (j + 1) & self.ips_mask
            if self.ips_tab[j].count == 0:
                break
            k = _ip_hash(self.ips_tab[j].addr) & self.ips_mask
            # Move j into the hole i unless k lies cyclically in (i, j].
            if (i <= j and (k <= i or k > j)) or (i > j and (k <= i and k > j)):
                self.ips_tab[i] = self.ips_tab[j]
                self.ips_tab[j].count = 0
                i = j

    # --- slots ---------------------------------------------------------------------

    cdef int64_t add_c(self, int fd, const uint8_t* addr16, uint16_t port, uint32_t now,
                       bint count_ip) noexcept:
        """Slot index for a new connection, or -1 (table full) / -2 (per-IP cap).
        With count_ip false the address is counted later, by ip_admit() at upgrade."""
        cdef uint32_t ip = self.ip_find(addr16)
        cdef int32_t idx
        cdef Slot* s
        cdef uint32_t gen
        if self.count >= self.capacity:
            return -1
        if count_ip and self.ips_tab[ip].count >= self.max_per_ip:
            return -2
        idx = self.free_head
        s = &self.slots[idx]
        # A never-used slot (gen 0) links implicitly to the next one; never-used slots
        # are handed out in order, so they all lie at `high` and above.
        self.free_head = <int32_t>s.in_block if s.gen else idx + 1
        if <uint32_t>idx >= self.high:
            self.high = idx + 1
        gen = s.gen + 1
        # 0 marks a never-used slot and 0xFFFFFFFF is the epoll tag of a listener
        # (LISTENER_TAG): no connection id may carry either.
        if gen == 0 or gen == 0xFFFFFFFF:
            gen = 1
        memset(s, 0, sizeof(Slot))
        s.gen = gen
        s.fd = fd
        memcpy(s.addr, addr16, 16)
        s.port = port
        s.state = SLOT_OPEN
        s.last_message = now
        s.last_receive = now
        s.ping_sent = now
        self.count += 1
        if count_ip:
            self.ip_admit(s)
        return idx

    cdef int ip_admit(self, Slot* s) noexcept:
        """Count the slot's address: 0, or -2 when it already holds max_per_ip."""
        cdef uint32_t ip
        if s.flags & SF_IP_COUNTED:
            return 0
        ip = self.ip_find(s.addr)
        if self.ips_tab[ip].count >= self.max_per_ip:
            return -2
        if self.ips_tab[ip].count == 0:
            memcpy(self.ips_tab[ip].addr, s.addr, 16)
            self.n_ips += 1
        self.ips_tab[ip].count += 1
        s.flags |= SF_IP_COUNTED
        return 0

    cdef inline Slot* get(self, uint64_t cid) noexcept:
        cdef uint64_t idx = <uint32_t>cid  # the low half; a Python-int literal here would box cid
        cdef Slot* s
        if idx >= self.capacity:
            return NULL
        s = &self.slots[idx]
        if s.state == SLOT_FREE or s.gen != <uint32_t>(cid >> 32):
            return NULL
        return s

    cdef void free_blocks(self, Slot* s) noexcept:
        cdef uint32_t h, nxt
        cdef uint32_t idx = <uint32_t>(s - self.slots)
        cdef Parsing* p = self.parsing
        # A parse in progress holds the state on its stack: give back its blocks there.
        while p != NULL:
            if p.idx == idx and p.gen == s.gen:
                release_parser_blocks(&p.st, self.pool)
                p.gen = 0
            p = p.outer
        if s.pstate:
            release_parser_blocks(<FrameState*>self.pool.ptr(s.pstate), self.pool)
            self.pool.release_c(s.pstate)
            s.pstate = 0
        if s.in_block:
            self.pool.release_c(s.in_block)
            s.in_block = 0
            s.in_len = 0
        h = s.out_head
        while h:
            nxt = (<uint32_t*>self.pool.ptr(h))[0]
            self.pool.release_c(h)
            h = nxt
        s.out_head = s.out_tail = 0
        s.out_bytes = 0

    cdef int remove_c(self, uint64_t cid) noexcept:
        """Free the slot; returns its fd, or -1 for a stale id."""
        cdef Slot* s = self.get(cid)
        cdef int fd
        cdef uint32_t idx = <uint32_t>cid
        if s == NULL:
            return -1
        fd = s.fd
        self.free_blocks(s)
        if s.flags & SF_IP_COUNTED:
            self._ip_dec(s.addr)
        s.state = SLOT_FREE
        s.fd = -1
        s.flags = 0
        s.in_block = <uint32_t>self.free_head
        self.free_head = idx
        self.count -= 1
        return fd

    # --- Python surface -----------------------------------------------------------

    cdef Slot* _slot(self, cid) except NULL:
        cdef Slot* s = self.get(<uint64_t>cid) if 0 <= cid < 2**64 else NULL
        if s == NULL:
            raise KeyError(cid)
        return s

    def __len__(self):
        return self.count

    def __contains__(self, cid):
        return isinstance(cid, int) and 0 <= cid < 2**64 and self.get(cid) != NULL

    def add(self, int fd, ip, int port=0, now=None):
        cdef bytes a = _addr16(ip)
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} is outside 0..65535")
        cdef int64_t idx = self.add_c(fd, <const uint8_t*>PyBytes_AS_STRING(a), port,
                                      monotonic_ms_c() if now is None else <uint32_t>now, True)
        if idx == -1:
            raise TableFull(f"connection table full ({self.capacity} slots)")
        if idx == -2:
            raise PerIPLimitExceeded(f"{addr_text(<const uint8_t*>PyBytes_AS_STRING(a))} "
                                     f"holds {self.max_per_ip} connections")
        return (<uint64_t>self.slots[idx].gen << 32) | <uint64_t>idx

    def remove(self, cid):
        self._slot(cid)
        return self.remove_c(cid)

    def ip_count(self, ip):
        cdef bytes a = _addr16(ip)
        return self.ips_tab[self.ip_find(<const uint8_t*>PyBytes_AS_STRING(a))].count

    def ips(self):
        return self.n_ips

    def memory(self):
        """Bytes of the table's two C arrays (see _core.pyi)."""
        return {
            "slot_size": sizeof(Slot),
            "capacity": self.capacity,
            "slots_bytes": <uint64_t>self.capacity * sizeof(Slot),
            "slots_used_bytes": <uint64_t>self.high * sizeof(Slot),
            "slots_in_use_bytes": <uint64_t>self.count * sizeof(Slot),
            "ip_entries": self.ips_mask + 1,
            "ip_table_bytes": <uint64_t>(self.ips_mask + 1) * sizeof(IPEntry),
            "ips": self.n_ips,
        }

    def touch(self, cid, now=None, *, bint message=True):
        cdef Slot* s = self._slot(cid)
        cdef uint32_t t = monotonic_ms_c() if now is None else <uint32_t>now
        s.last_receive = t
        s.flags &= ~SF_PING_SENT
        if message:
            s.last_message = t

    def set_inflight(self, cid, uint16_t n):
        self._slot(cid).inflight = n

    def mark_ping_sent(self, cid, now=None):
        cdef Slot* s = self._slot(cid)
        s.flags |= SF_PING_SENT
        s.ping_sent = monotonic_ms_c() if now is None else <uint32_t>now

    def info(self, cid):
        cdef Slot* s = self._slot(cid)
        return {
            "fd": s.fd,
            "state": s.state,
            "peer": (addr_text(s.addr), s.port),
            "last_message": s.last_message,
            "last_receive": s.last_receive,
            "inflight": s.inflight,
            "pending_output": s.out_bytes,
            "ping_outstanding": bool(s.flags & SF_PING_SENT),
        }
