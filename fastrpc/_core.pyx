# cython: language_level=3
"""fastrpc._core: buffer pool, RFC 6455 frame codec and connection table.

It owns bytes and nothing else: no asyncio, no JSON. See _core.pxd for the C
contract (every field with its unit and invariant) and _core.pyi for the documented
Python surface. The sections live in include files, one job each:

  _bytes.pxi   unmasking on machine words, incremental UTF-8 validation
  _pool.pxi    BufferPool
  _frames.pxi  frame parser (parse_next) and encoder
  _table.pxi   ConnTable
  _engine.pxi  Engine: the connection protocol of both roles (HTTP phase, frames,
               out chains, timers), sans-I/O
  _driver.pxi  Reactor(Engine): the epoll I/O driver (the only part doing I/O)
"""
cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.errno cimport errno, EINTR
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset, memcmp

cdef extern from "unistd.h" nogil:
    int close(int fd)

cdef extern from "string.h" nogil:
    void* memmem(const void* h, size_t hl, const void* n, size_t nl)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef extern from "sys/random.h" nogil:
    ssize_t getrandom(void* buf, size_t buflen, unsigned int flags)

import socket as _socket

from fastrpc.errors import InvalidBlock, PerIPLimitExceeded, PoolExhausted, ProtocolError, TableFull

# Python-visible copies of C constants (a cdef enum is not importable).
globals()["MAX_CLASSES"] = <int>MAX_CLASSES


include "_bytes.pxi"
include "_pool.pxi"
include "_frames.pxi"
include "_table.pxi"
include "_engine.pxi"
include "_driver.pxi"
