# BufferPool: fixed-size blocks in size classes, carved from lazily reserved arenas.
#
# A handle names a block: ((class << 29) | (arena << 13) | block) + 1, so 0 means
# "no block" and a slot spends 4 bytes per borrowed block. Each arena is followed by
# one state byte per block (FREE / USED) so double and foreign releases are caught in
# O(1). Free blocks form an intrusive list: a free block's first 4 bytes hold the
# handle of the next free block of its class.

cdef enum:
    BLOCK_FREE = 0
    BLOCK_USED = 1

cdef extern from "sys/mman.h" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    enum:
        PROT_READ
        PROT_WRITE
        MAP_PRIVATE
        MAP_ANONYMOUS
    void* MAP_FAILED


# Arenas are mapped, not malloc'd: trim() gives their pages back to the kernel at once,
# so bytes_reserved is what the pool holds of the process's RSS. (From malloc, a freed
# arena may stay in the heap: glibc raises its mmap threshold after the first free of
# a large chunk and serves later arenas from the heap, whose top it keeps.)
cdef inline char* _map_arena(PoolClass* c) noexcept:
    cdef void* mem = mmap(NULL, c.arena_bytes + c.blocks_per_arena, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    return NULL if mem == MAP_FAILED else <char*>mem


cdef inline void _unmap_arena(PoolClass* c, char* mem) noexcept:
    munmap(mem, c.arena_bytes + c.blocks_per_arena)

DEFAULT_SIZE_CLASSES = (1024, 8192, 65536, 1048576)
DEFAULT_POOL_LIMIT = 64 * 1024 * 1024
DEFAULT_ARENA_SIZE = 256 * 1024


cdef inline uint32_t _h_cls(uint32_t h) noexcept:
    return (h - 1) >> 29

cdef inline uint32_t _h_arena(uint32_t h) noexcept:
    return ((h - 1) >> HANDLE_BLOCK_BITS) & ((1 << HANDLE_ARENA_BITS) - 1)

cdef inline uint32_t _h_block(uint32_t h) noexcept:
    return (h - 1) & ((1 << HANDLE_BLOCK_BITS) - 1)

cdef inline uint32_t _h_make(uint32_t cls, uint32_t arena, uint32_t block) noexcept:
    return ((cls << 29) | (arena << HANDLE_BLOCK_BITS) | block) + 1


cdef class BufferPool:
    def __cinit__(self, size_classes=DEFAULT_SIZE_CLASSES, size_t limit=DEFAULT_POOL_LIMIT,
                  size_t arena_size=DEFAULT_ARENA_SIZE):
        cdef int i
        cdef uint32_t bs, per, max_arenas
        cdef size_t arena
        self.n_classes = 0
        sizes = [int(s) for s in size_classes]
        if not sizes or len(sizes) > MAX_CLASSES:
            raise ValueError(f"between 1 and {MAX_CLASSES} size classes")
        for i in range(len(sizes)):
            if sizes[i] < 16 or sizes[i] % 16 or sizes[i] > (1 << 30):
                raise ValueError("each size class must be a multiple of 16 between 16 and 1 GiB")
            if i and sizes[i] <= sizes[i - 1]:
                raise ValueError("size classes must be strictly increasing")
        if limit < sizes[len(sizes) - 1]:
            raise ValueError("limit must hold at least one block of the largest class")
        self.limit = limit
        for i in range(len(sizes)):
            bs = sizes[i]
            arena = max(arena_size, bs)
            # Few enough arenas that an arena index fits its handle bits.
            arena = max(arena, (limit // ((1 << HANDLE_ARENA_BITS) - 2)) + 1)
            per = <uint32_t>min(arena // bs, <size_t>1 << HANDLE_BLOCK_BITS)
            max_arenas = <uint32_t>min(limit // (<size_t>bs * per) + 1, (1 << HANDLE_ARENA_BITS) - 2)
            self.classes[i].block_size = bs
            self.classes[i].blocks_per_arena = per
            self.classes[i].arena_bytes = bs * per
            self.classes[i].max_arenas = max_arenas
            self.classes[i].n_arenas = 0
            self.classes[i].free_head = 0
            self.classes[i].in_use = 0
            self.classes[i].reserved = 0
            self.classes[i].arenas = <char**>calloc(max_arenas, sizeof(char*))
            self.classes[i].arena_used = <uint16_t*>calloc(max_arenas, sizeof(uint16_t))
            self.n_classes = i + 1
            if self.classes[i].arenas == NULL or self.classes[i].arena_used == NULL:
                raise MemoryError()
        # What larger classes leave to the smallest: one of its arenas, unless that
        # would keep the largest class from ever reserving one.
        largest_arena = max(self.classes[i].arena_bytes for i in range(1, self.n_classes)) \
            if self.n_classes > 1 else limit
        self.reserve = min(self.classes[0].arena_bytes, max(0, <Py_ssize_t>limit - <Py_ssize_t>largest_arena)) \
            if self.n_classes > 1 else 0

    def __dealloc__(self):
        cdef int i
        cdef uint32_t a
        for i in range(self.n_classes):
            if self.classes[i].arenas != NULL:
                for a in range(self.classes[i].n_arenas):
                    if self.classes[i].arenas[a] != NULL:
                        _unmap_arena(&self.classes[i], self.classes[i].arenas[a])
                free(self.classes[i].arenas)
            free(self.classes[i].arena_used)

    # --- C API: O(1), no Python objects -----------------------------------------------

    cdef int _reserve_arena(self, int cls) noexcept:
        """Reserve one arena for class `cls` and thread its blocks on the free list.
        Returns 0, or -1 when the ceiling (or mmap) says no."""
        cdef PoolClass* c = &self.classes[cls]
        cdef uint32_t a, b, h
        cdef char* mem
        cdef size_t keep = 0
        # Larger classes leave room for one arena of the smallest class, so control
        # frames, frame headers and handshake heads never starve behind large messages.
        if cls != 0 and self.classes[0].reserved < self.reserve:
            keep = self.reserve - self.classes[0].reserved
        if self.bytes_reserved + c.arena_bytes + keep > self.limit:
            return -1
        # Reuse a slot freed by trim() before extending: bounded by max_arenas, and paid
        # only once per blocks_per_arena acquires.
        a = 0
        while a < c.n_arenas and c.arenas[a] != NULL:
            a += 1
        if a == c.n_arenas:
            if c.n_arenas >= c.max_arenas:
                return -1
            c.n_arenas += 1
        mem = _map_arena(c)
        if mem == NULL:
            return -1
        # (the state bytes are BLOCK_FREE already: a new mapping is zero-filled)
        c.arenas[a] = mem
        c.arena_used[a] = 0
        c.reserved += c.arena_bytes
        self.bytes_reserved += c.arena_bytes
        # Thread the blocks so the lowest address is handed out first.
        b = c.blocks_per_arena
        while b > 0:
            b -= 1
            h = _h_make(cls, a, b)
            (<uint32_t*>(mem + <size_t>b * c.block_size))[0] = c.free_head
            c.free_head = h
        return 0

    cdef uint32_t acquire_c(self, size_t size) noexcept:
        """Handle of a block holding `size` bytes, or 0 (ceiling reached, or too big)."""
        cdef int cls = 0
        cdef PoolClass* c
        cdef uint32_t h
        cdef char* p
        while cls < self.n_classes and self.classes[cls].block_size < size:
            cls += 1
        if cls == self.n_classes:
            return 0
        c = &self.classes[cls]
        if c.free_head == 0 and self._reserve_arena(cls) < 0:
            self.failed_acquires += 1
            return 0
        h = c.free_head
        p = c.arenas[_h_arena(h)] + <size_t>_h_block(h) * c.block_size
        c.free_head = (<uint32_t*>p)[0]
        c.arenas[_h_arena(h)][c.arena_bytes + _h_block(h)] = BLOCK_USED
        c.arena_used[_h_arena(h)] += 1
        c.in_use += 1
        self.bytes_in_use += c.block_size
        if self.bytes_in_use > self.high_water:
            self.high_water = self.bytes_in_use
        return h

    cdef int _check(self, uint32_t h) noexcept:
        """0 when `h` names a block of this pool that is in use, else -1."""
        cdef uint32_t cls, a, b
        if h == 0:
            return -1
        cls = _h_cls(h)
        if cls >= <uint32_t>self.n_classes:
            return -1
        a = _h_arena(h)
        b = _h_block(h)
        if a >= self.classes[cls].n_arenas or b >= self.classes[cls].blocks_per_arena:
            return -1
        if self.classes[cls].arenas[a] == NULL:
            return -1
        if self.classes[cls].arenas[a][self.classes[cls].arena_bytes + b] != BLOCK_USED:
            return -1
        return 0

    cdef int release_c(self, uint32_t h) noexcept:
        """Return a block: 0, or -1 for a handle not in use here (nothing changes)."""
        cdef PoolClass* c
        cdef uint32_t a, b
        if self._check(h) < 0:
            return -1
        c = &self.classes[_h_cls(h)]
        a = _h_arena(h)
        b = _h_block(h)
        c.arenas[a][c.arena_bytes + b] = BLOCK_FREE
        (<uint32_t*>(c.arenas[a] + <size_t>b * c.block_size))[0] = c.free_head
        c.free_head = h
        c.arena_used[a] -= 1
        c.in_use -= 1
        self.bytes_in_use -= c.block_size
        return 0

    cdef inline char* ptr(self, uint32_t h) noexcept:
        cdef PoolClass* c = &self.classes[_h_cls(h)]
        return c.arenas[_h_arena(h)] + <size_t>_h_block(h) * c.block_size

    cdef inline uint32_t capacity_of(self, uint32_t h) noexcept:
        return self.classes[_h_cls(h)].block_size

    cdef uint32_t grow_c(self, uint32_t h, uint32_t used, size_t size) noexcept:
        """A block holding `size` bytes that starts with the `used` bytes of `h`
        (h may be 0). Returns `h` itself when it is big enough, a new handle (h released)
        otherwise, or 0 on failure (h untouched and still owned by the caller)."""
        cdef uint32_t n
        if h != 0 and self.classes[_h_cls(h)].block_size >= size:
            return h
        n = self.acquire_c(size)
        if n == 0:
            return 0
        if h != 0:
            if used:
                memcpy(self.ptr(n), self.ptr(h), used)
            self.release_c(h)
        return n

    # --- Python surface (tests, stats, the Python layer) ----------------------------------

    @property
    def size_classes(self):
        return tuple(self.classes[i].block_size for i in range(self.n_classes))

    def acquire(self, size_t size):
        if size > self.classes[self.n_classes - 1].block_size:
            raise ValueError(f"{size} bytes is over the largest size class")
        h = self.acquire_c(size)
        if h == 0:
            raise PoolExhausted(f"buffer pool at its ceiling of {self.limit} bytes")
        return h

    def release(self, handle):
        if not isinstance(handle, int) or not (0 < handle < 2**32) or self.release_c(handle) < 0:
            raise InvalidBlock(f"block handle {handle!r} is not in use in this pool")

    def _live(self, handle):
        if not isinstance(handle, int) or not (0 < handle < 2**32) or self._check(handle) < 0:
            raise InvalidBlock(f"block handle {handle!r} is not in use in this pool")
        return <uint32_t>handle

    def block_size(self, handle):
        return self.capacity_of(self._live(handle))

    def write(self, handle, Py_ssize_t offset, data):
        cdef uint32_t h = self._live(handle)
        cdef Py_buffer buf
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        try:
            if offset < 0 or offset + buf.len > self.capacity_of(h):
                raise IndexError("write outside the block")
            if buf.len:
                memcpy(self.ptr(h) + offset, buf.buf, buf.len)
        finally:
            PyBuffer_Release(&buf)

    def read(self, handle, Py_ssize_t offset, Py_ssize_t size):
        cdef uint32_t h = self._live(handle)
        if offset < 0 or size < 0 or offset + size > self.capacity_of(h):
            raise IndexError("read outside the block")
        return PyBytes_FromStringAndSize(self.ptr(h) + offset, size)

    def trim(self):
        cdef int cls
        cdef uint32_t a, b, h
        cdef PoolClass* c
        cdef size_t freed = 0
        for cls in range(self.n_classes):
            c = &self.classes[cls]
            for a in range(c.n_arenas):
                if c.arenas[a] != NULL and c.arena_used[a] == 0:
                    _unmap_arena(c, c.arenas[a])
                    c.arenas[a] = NULL
                    c.reserved -= c.arena_bytes
                    freed += c.arena_bytes
            # Rebuild the free list from the arenas that remain.
            c.free_head = 0
            a = c.n_arenas
            while a > 0:
                a -= 1
                if c.arenas[a] == NULL:
                    continue
                b = c.blocks_per_arena
                while b > 0:
                    b -= 1
                    if c.arenas[a][c.arena_bytes + b] == BLOCK_FREE:
                        h = _h_make(cls, a, b)
                        (<uint32_t*>(c.arenas[a] + <size_t>b * c.block_size))[0] = c.free_head
                        c.free_head = h
            while c.n_arenas and c.arenas[c.n_arenas - 1] == NULL:
                c.n_arenas -= 1
        self.bytes_reserved -= freed
        return freed

    def stats(self):
        return {
            "bytes_reserved": self.bytes_reserved,
            "bytes_in_use": self.bytes_in_use,
            "high_water": self.high_water,
            "failed_acquires": self.failed_acquires,
            "limit": self.limit,
            "size_classes": self.size_classes,
            "blocks_in_use": tuple(self.classes[i].in_use for i in range(self.n_classes)),
            "classes": [self._class_stats(i) for i in range(self.n_classes)],
        }

    cdef dict _class_stats(self, int i):
        cdef PoolClass* c = &self.classes[i]
        cdef uint32_t a, arenas = 0
        for a in range(c.n_arenas):
            if c.arenas[a] != NULL:
                arenas += 1
        return {
            "block_size": c.block_size,
            "blocks_total": arenas * c.blocks_per_arena,
            "blocks_in_use": c.in_use,
            "arenas": arenas,
            "bytes_reserved": c.reserved,
            # Besides the blocks: one state byte per block after each arena, and the
            # class's arena pointer and use-count arrays (max_arenas * 10 bytes).
            "overhead_bytes": arenas * c.blocks_per_arena + c.max_arenas * (sizeof(char*) + sizeof(uint16_t)),
        }

    def __repr__(self):
        return (f"<BufferPool classes={self.size_classes} in_use={self.bytes_in_use} "
                f"reserved={self.bytes_reserved} limit={self.limit}>")
