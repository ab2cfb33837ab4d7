# cython: freethreading_compatible=False
"""The compiled half of ``fastrpc.dispatch``: one whole message in, reply bytes out, for
the shape nearly every request has.

``FastCall(dispatcher).on_message(cid, data)`` is ``Dispatcher.on_message``. It decodes the message
and, when it is a single Request object for a synchronous method whose namespace's
breaker is closed, runs the call and encodes the reply itself: no Python frame of
fastrpc's on the way. Everything else (batches, invalid requests, unknown methods,
async, threaded and subscription methods, params that need binding or type checks, an
open breaker) goes to the dispatcher's Python code with the decoded message, so each
rule of the specification is written once, in ``dispatch.py``; tests run every
transcript through both paths and require the same bytes.

Why compiled: at 32 requests in flight the interpreter's own work (attribute and dict
lookups, type tests, the frame) cost about as much as decoding and encoding the JSON.
No JSON lives in ``_core`` (it owns bytes only); this module owns the one hot call.

**Request counters** (issue 11) live here too, as C fields, so the common call pays for
them in C: ``MethodCore`` keeps per-method counts by outcome (``OUTCOMES``), a histogram
of durations over ``DURATION_BUCKETS`` and their sum; ``FastCall`` counts the parse
errors, invalid requests and unknown methods it answers itself. Durations are read
with ``clock_gettime(CLOCK_MONOTONIC)`` (the vDSO: no system call, 24 ns a read on the
machine of the README's figures), twice per call: at its start and once its reply is
encoded. Measured (``benchmarks/dispatch_cpu.py``, before and after): +15-20 ns of CPU
for the small call, +30-40 ns for a notification (no encoding to overlap the reads
with), 1-2 % of the server's CPU per request under load. One read per readiness batch
shared by its calls would halve that, at the price of charging each call with the
frame work and the ``recv`` before it; not worth it at that cost. The Python paths of ``fastrpc.dispatch`` record into the same fields through
``MethodCore.done`` / ``refuse`` / ``raised`` with a ``time.monotonic_ns()`` start (the
same clock).
"""
cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.list cimport PyList_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.string cimport memcpy, memcmp
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport int64_t, uint64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

import orjson

from .errors import RPCError
from .jsonrpc import NO_ID, NO_PARAMS, PARSE_ERROR_REPLY, NOT_AN_OBJECT_REPLY, error

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _DecodeError = orjson.JSONDecodeError
cdef object _RPCError = RPCError
cdef object _NO_ID = NO_ID
cdef object _NO_PARAMS = NO_PARAMS
cdef object _PARSE_ERROR_REPLY = PARSE_ERROR_REPLY
cdef object _NOT_AN_OBJECT_REPLY = NOT_AN_OBJECT_REPLY
cdef object _error = error
cdef object NOT_SCANNED = object()  # scan(): not the recognised layout
cdef enum:
    # service.SYNC; not imported, as service imports this module.
    SYNC_KIND = 0

#: ``service.SYNC`` as this module sees it (a unit test checks that they agree).
SYNC = SYNC_KIND


# --- request counters -----------------------------------------------------------------

cdef enum:
    # Outcomes of a call, the index into MethodCore.counts (and OUTCOMES).
    O_SUCCESS = 0   # a result
    O_ERROR = 1     # the handler raised RPCError: an application error answer (-32602 too)
    O_FAILURE = 2   # an unexpected exception (-32603), or a forwarded call's upstream lost
    O_TIMEOUT = 3   # the namespace's timeout (-32001), or a forwarded call's pool timeout
    O_REFUSED = 4   # breaker open, namespace busy, server busy: the handler never ran
    N_OUTCOMES = 5
    # Not a per-method outcome: the answer was -32601 (an RPCError whose outcome is
    # "unknown", e.g. a gateway relaying its upstream's "method not found"). Counted by
    # the dispatcher, never per method: names from clients must not become entries.
    O_UNKNOWN = 5
    N_BOUNDS = 19   # len(DURATION_BUCKETS)
    N_BUCKETS = 20  # N_BOUNDS + 1: the last counts durations above the largest bound
    N_BATCH_BOUNDS = 10   # len(BATCH_BUCKETS)
    N_BATCH_BUCKETS = 11  # N_BATCH_BOUNDS + 1: the last counts longer batches

#: Outcome names, in the order of their indices (``SUCCESS`` ... ``REFUSED``).
OUTCOMES = ("success", "error", "failure", "timeout", "refused")
SUCCESS = O_SUCCESS
ERROR = O_ERROR
FAILURE = O_FAILURE
TIMEOUT = O_TIMEOUT
REFUSED = O_REFUSED
UNKNOWN = O_UNKNOWN
cdef dict _OUTCOME_INDEX = {name: i for i, name in enumerate(OUTCOMES)}
_OUTCOME_INDEX["unknown"] = O_UNKNOWN

#: Upper bounds, in seconds, of the call duration histogram (``fastrpc.dispatch``
#: re-exports it). 1-2.5-5 steps from 10 us to 10 s: below 10 us are the synchronous
#: calls that do not wait for anything (the common call takes 0.5-2 us; finer bounds
#: would measure the interpreter, not the handler), 10 s is a third of the default
#: request timeout, and what runs longer shows in the last bucket and as "timeout".
DURATION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
cdef int64_t BOUND_NS[N_BOUNDS]
for _i in range(N_BOUNDS):
    BOUND_NS[_i] = <int64_t>round(DURATION_BUCKETS[_i] * 1e9)
assert len(DURATION_BUCKETS) == N_BOUNDS

#: Upper bounds of the batch length histogram (entries; ``fastrpc.dispatch``
#: re-exports it), up to the default ``Limits.max_batch_length``; one more bucket
#: counts longer batches (a raised limit).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
cdef Py_ssize_t BATCH_BOUND[N_BATCH_BOUNDS]
for _i in range(N_BATCH_BOUNDS):
    BATCH_BOUND[_i] = BATCH_BUCKETS[_i]
assert len(BATCH_BUCKETS) == N_BATCH_BOUNDS


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void record(MethodCore m, int outcome, int64_t start) noexcept:
    """One call of ``m`` that ran, ended with ``outcome`` now; it started at ``start``
    (ns, CLOCK_MONOTONIC). The bucket search is linear from the smallest bound: the
    common call stops at the first compare."""
    cdef int64_t d = now_ns() - start
    cdef int i = 0
    if d < 0:
        d = 0
    while i < N_BOUNDS and d > BOUND_NS[i]:  # Prometheus "le": a bound is inclusive
        i += 1
    m.buckets[i] += 1
    m.counts[outcome] += 1
    m.total_ns += <uint64_t>d


cdef int outcome_of(object e) except -1:
    """The outcome an RPCError stands for: its class's ``outcome`` name (RPCError:
    "error"; see fastrpc.errors for the ones cluster forwarding raises)."""
    cdef object name = getattr(e, "outcome", "error")
    cdef object i = _OUTCOME_INDEX.get(name)
    return O_ERROR if i is None else <int>i


cdef int settle(MethodCore m, object e, int64_t start) except -1:
    """Record the outcome of ``m``'s call that raised the RPCError ``e``; returns it
    (O_UNKNOWN: nothing recorded here, the caller counts an unknown method)."""
    cdef int o = outcome_of(e)
    if o == O_REFUSED:
        m.counts[O_REFUSED] += 1
    elif o != O_UNKNOWN:
        record(m, o, start)
    return o


# A reply's and a request's common opening (scan() matches requests against it too).
cdef const char* HEAD = b'{"jsonrpc":"2.0","id":'
cdef const char* MID = b',"result":'
DEF HEAD_LEN = 22
DEF MID_LEN = 10


include "_digits.pxi"


cpdef bytes result_reply(object rid, object value):
    """``orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": value})``, byte for byte,
    without building the dict: the result is encoded once and framed by constant
    bytes; an int id is written here, any other id is encoded by orjson."""
    cdef bytes res = _dumps(value)
    cdef bytes rid_json = None
    cdef char digits[24]
    cdef Py_ssize_t idn = 0, rn = PyBytes_GET_SIZE(res)
    cdef const char* idp = NULL
    cdef int overflow = 0
    cdef long long v
    if type(rid) is int:
        v = PyLong_AsLongLongAndOverflow(rid, &overflow)
        if overflow:
            rid_json = _dumps(rid)
        else:
            idn = format_int(digits, v)
            idp = digits
    elif rid is None:
        idp = b"null"
        idn = 4
    else:
        rid_json = _dumps(rid)
    if rid_json is not None:
        idp = PyBytes_AS_STRING(rid_json)
        idn = PyBytes_GET_SIZE(rid_json)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HEAD_LEN + idn + MID_LEN + rn + 1)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, HEAD, HEAD_LEN)
    o += HEAD_LEN
    memcpy(o, idp, idn)
    o += idn
    memcpy(o, MID, MID_LEN)
    o += MID_LEN
    memcpy(o, PyBytes_AS_STRING(res), rn)
    o[rn] = 125  # '}'
    return out


cdef class BreakerCore:
    """Base of ``isolation.Bulkhead``: the two breaker fields the hot path tests, kept
    as C ints so reading them costs no attribute lookup. CLOSED is 0."""

    cdef public int state      # CLOSED (0), OPEN or HALF_OPEN: see fastrpc.isolation
    cdef public int failures   # consecutive failures counted while closed


cdef class MethodCore:
    """Base of ``service.Method``: the fields FastCall reads, as C struct members.

    ``lo..hi``: array lengths that may go straight to ``fn(*params)`` (no binding)
    once the simple type tests in ``checks`` pass; an empty range (lo > hi) when none
    may. ``checks``: ``(index, allowed types)`` pairs, a frozenset of exact types each
    (what ``Plan.checks`` holds); a failing test leaves the call to ``invoke``, which
    produces the -32602 answer."""

    cdef public object fn
    cdef public int kind
    cdef public Py_ssize_t lo, hi
    cdef public tuple checks
    cdef public BreakerCore bulkhead
    cdef public object invoke
    # Request counters (module docstring): calls by outcome; the durations of the calls
    # that ran (every outcome but "refused"), non-cumulative over DURATION_BUCKETS with
    # one more for above the largest bound; their sum in ns (exact, and an integer add
    # is cheaper per call than a double one; 2**64 ns is 584 years).
    cdef uint64_t counts[N_OUTCOMES]
    cdef uint64_t buckets[N_BUCKETS]
    cdef uint64_t total_ns

    def done(self, int outcome, int64_t start_ns):
        """Count a call that ran and ended with ``outcome`` (SUCCESS, ERROR, FAILURE or
        TIMEOUT) now; it started at ``start_ns`` (``time.monotonic_ns()``)."""
        if not 0 <= outcome < O_REFUSED:
            raise ValueError(f"not the outcome of a call that ran: {outcome}")
        record(self, outcome, start_ns)

    def refuse(self):
        """Count a call answered without running (breaker open, busy)."""
        self.counts[O_REFUSED] += 1

    def raised(self, object e, int64_t start_ns):
        """Count a call that ended by raising the RPCError ``e`` now (its outcome is the
        exception's ``outcome``); returns the outcome's index: UNKNOWN when the answer
        is "method not found", counted by the dispatcher rather than here."""
        return settle(self, e, start_ns)

    def stats(self):
        """This method's counters: ``{"success": n, "error": n, "failure": n,
        "timeout": n, "refused": n, "buckets": [n, ...], "sum": seconds}``."""
        cdef int i
        out = {OUTCOMES[i]: self.counts[i] for i in range(N_OUTCOMES)}
        out["buckets"] = [self.buckets[i] for i in range(N_BUCKETS)]
        out["sum"] = self.total_ns / 1e9
        return out

    @property
    def calls(self):
        """Calls counted, every outcome (refused included)."""
        cdef uint64_t n = 0
        cdef int i
        for i in range(N_OUTCOMES):
            n += self.counts[i]
        return n


cdef bint passes(tuple checks, list params, Py_ssize_t n) except -1:
    """Every (index, allowed) test of a method's plan holds for ``params``."""
    cdef Py_ssize_t i
    for check in checks:
        i = (<tuple>check)[0]
        if i < n and type(params[i]) not in <frozenset>(<tuple>check)[1]:
            return False
    return True


cdef const char* P_NOID = b'{"jsonrpc":"2.0","method":"'    # 27 bytes
cdef const char* P_METHOD = b',"method":"'                  # 11 bytes
cdef const char* P_PARAMS = b'","params":'                  # 11 bytes
DEF MAX_NAME = 128  # longer method names or string ids take the general path


cdef inline Py_ssize_t plain_string(const unsigned char* d, Py_ssize_t i, Py_ssize_t n) noexcept:
    """End (index of the closing quote) of a string body starting at d[i] made only of
    printable ASCII without quote or backslash: its JSON text is its value. -1 if not."""
    cdef Py_ssize_t j = i
    cdef unsigned char c
    while j < n and j - i <= MAX_NAME:
        c = d[j]
        if c == 34:  # '"'
            return j
        if c < 0x20 or c > 0x7E or c == 92:  # control, non-ASCII, backslash
            return -1
        j += 1
    return -1


@cython.final
cdef class FastCall:
    """``Dispatcher.on_message`` (see the module docstring). Holds the dispatcher's
    method table (the same dict: later registrations are seen) and its slow paths."""

    cdef dict table
    cdef object call         # Dispatcher._call(cid, msg, b, idx): any request object
    cdef object batch        # Dispatcher._batch(cid, msg, entry)
    cdef object entry        # self.call_entry, bound once: what _batch calls per entry
    cdef object failed       # Dispatcher._failed(m, rid): log, count, -32603
    cdef object transport
    # Answers this entry point gives itself (the Python path counts its own in the
    # Dispatcher; Dispatcher.metrics() adds the two): messages that are not JSON;
    # JSON that is neither an object nor an array (-32600); calls whose handler raised
    # an RPCError meaning "method not found" (outcome "unknown").
    cdef public uint64_t parse_errors
    cdef public uint64_t invalid_requests
    cdef public uint64_t unknown_methods
    # Batches this entry point handed to Dispatcher._batch to be answered entry by
    # entry (1..max_batch entries; an empty or too long one is Dispatcher._batch's one
    # -32600, counted there): how many, their entries, their lengths over BATCH_BUCKETS.
    cdef Py_ssize_t max_batch
    cdef uint64_t batches
    cdef uint64_t batch_sum
    cdef uint64_t batch_buckets[N_BATCH_BUCKETS]

    def __init__(self, dispatcher):
        self.table = dispatcher._table
        self.call = dispatcher._call
        self.batch = dispatcher._batch
        self.failed = dispatcher._failed
        self.transport = dispatcher._transport
        self.entry = self.call_entry
        self.max_batch = dispatcher._max_batch

    def counters(self):
        """What this entry point counted itself (``Dispatcher.metrics()`` adds the
        Python path's): ``parse_errors``, ``invalid_requests``, ``unknown_methods``,
        ``batches``, ``batch_sum`` and ``batch_buckets`` (a list, non-cumulative)."""
        cdef int i
        return {"parse_errors": self.parse_errors, "invalid_requests": self.invalid_requests,
                "unknown_methods": self.unknown_methods, "batches": self.batches,
                "batch_sum": self.batch_sum,
                "batch_buckets": [self.batch_buckets[i] for i in range(N_BATCH_BUCKETS)]}

    cdef object scan(self, cid, bytes data):
        """Recognise the byte layout nearly every client sends,

            {"jsonrpc":"2.0","id":ID,"method":"NAME","params":[...]}

        (also without "id", without "params", or with ``"params":[]``), where ID is
        null, a decimal integer of at most 18 digits or a plain string, and NAME and a
        string ID are plain strings (see plain_string). The params array is decoded by
        orjson, which also proves the rest of the text is well formed: anything after
        the array (a duplicate key, a second member) makes it fail. Not a JSON parser:
        a recogniser of one layout, so that the common request skips building a dict
        and four strings (about a third of the call's cost).

        Returns what ``run`` answers for the request found, or NOT_SCANNED: decode
        the whole message with orjson."""
        cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t i, j, k
        cdef long long v
        cdef bint neg
        cdef object rid, method, params
        if n < 30 or d[n - 1] != 125:  # '}'
            return NOT_SCANNED
        if memcmp(d, HEAD, HEAD_LEN) == 0:
            i = HEAD_LEN
            if d[i] == 34:  # a string id
                j = plain_string(d, i + 1, n)
                if j < 0:
                    return NOT_SCANNED
                rid = PyUnicode_DecodeASCII(<const char*>d + i + 1, j - i - 1, NULL)
                i = j + 1
            elif d[i] == 110:  # null
                if i + 4 > n or memcmp(d + i, b"null", 4) != 0:
                    return NOT_SCANNED
                rid = None
                i += 4
            else:
                neg = d[i] == 45  # '-'
                if neg:
                    i += 1
                j = i
                v = 0
                while j < n and 48 <= d[j] <= 57 and j - i < 18:
                    v = v * 10 + (d[j] - 48)
                    j += 1
                # JSON integers: no leading zeros, no "-0"; fractions/exponents: general path
                if j == i or (d[i] == 48 and (j - i > 1 or neg)):
                    return NOT_SCANNED
                rid = -v if neg else v
                i = j
            if i + 11 > n or memcmp(d + i, P_METHOD, 11) != 0:
                return NOT_SCANNED
            i += 11
        elif memcmp(d, P_NOID, 27) == 0:
            rid = _NO_ID
            i = 27
        else:
            return NOT_SCANNED
        j = plain_string(d, i, n)
        if j <= i:
            return NOT_SCANNED
        method = PyUnicode_DecodeASCII(<const char*>d + i, j - i, NULL)
        i = j
        if i + 2 == n:  # '"}': no params
            return self.run(cid, None, data, rid, method, _NO_PARAMS, None, 0)
        if i + 11 > n or memcmp(d + i, P_PARAMS, 11) != 0:
            return NOT_SCANNED
        i += 11
        k = n - 1 - i  # the params text: up to the final '}'
        if k == 2 and d[i] == 91 and d[i + 1] == 93:  # []
            return self.run(cid, None, data, rid, method, [], None, 0)
        if k < 2 or d[i] != 91:  # not an array: the general path
            return NOT_SCANNED
        try:
            params = _loads(PyBytes_FromStringAndSize(<const char*>d + i, k))
        except _DecodeError:
            return NOT_SCANNED  # not one array after all: let the full decode give the answer
        if type(params) is not list:
            return NOT_SCANNED
        return self.run(cid, None, data, rid, method, params, None, 0)

    def on_message(self, cid, data):
        """Dispatcher.on_message: reply bytes to write now, or None."""
        cdef object msg, reply
        if type(data) is bytes:
            reply = self.scan(cid, <bytes>data)
            if reply is not NOT_SCANNED:
                return reply
        try:
            msg = _loads(data)
        except _DecodeError:
            self.parse_errors += 1
            return _PARSE_ERROR_REPLY
        cdef Py_ssize_t n, i = 0
        if type(msg) is not dict:
            if type(msg) is list:
                n = PyList_GET_SIZE(msg)
                if 0 < n <= self.max_batch:
                    while i < N_BATCH_BOUNDS and n > BATCH_BOUND[i]:
                        i += 1
                    self.batch_buckets[i] += 1
                    self.batches += 1
                    self.batch_sum += <uint64_t>n
                return self.batch(cid, msg, self.entry)
            self.invalid_requests += 1
            return _NOT_AN_OBJECT_REPLY
        return self.request(cid, msg, None, 0)

    def call_entry(self, cid, msg, b, idx):
        """``Dispatcher._call`` for one decoded request object (a batch entry): the
        same answer, compiled for the common shape."""
        return self.request(cid, msg, b, idx)

    cdef object request(self, cid, msg, b, idx):
        cdef object rid, method, params
        cdef PyObject* p
        # Anything unusual below goes to the Python path, which answers it exactly.
        p = PyDict_GetItem(msg, "jsonrpc")
        if p == NULL or type(<object>p) is not str or <str>p != "2.0":
            return self.call(cid, msg, b, idx)
        p = PyDict_GetItem(msg, "method")
        if p == NULL or type(<object>p) is not str:
            return self.call(cid, msg, b, idx)
        method = <object>p
        p = PyDict_GetItem(msg, "id")
        if p == NULL:
            rid = _NO_ID
        else:
            rid = <object>p
            if not (type(rid) is int or type(rid) is str or rid is None or type(rid) is float):
                return self.call(cid, msg, b, idx)
        p = PyDict_GetItem(msg, "params")
        params = _NO_PARAMS if p == NULL else <object>p
        return self.run(cid, msg, None, rid, method, params, b, idx)

    cdef object run(self, cid, msg, data, rid, method, params, b, idx):
        """One valid-looking request: call it here if it has the common shape, else
        hand the decoded message (decoding it now if scan() found it) to Python."""
        cdef MethodCore m
        cdef BreakerCore bh
        cdef object value, reply
        cdef PyObject* p
        cdef Py_ssize_t n
        cdef int64_t start
        p = PyDict_GetItem(self.table, method)
        if p == NULL or not isinstance(<object>p, MethodCore):
            return self.slow(cid, msg, data, b, idx)
        m = <MethodCore>p
        if m.kind != SYNC_KIND:
            return self.slow(cid, msg, data, b, idx)
        bh = m.bulkhead
        if bh is None or bh.state:
            return self.slow(cid, msg, data, b, idx)
        start = now_ns()
        try:
            if params is _NO_PARAMS:
                value = m.fn() if m.lo == 0 else m.invoke(params, self.transport, cid)
            elif type(params) is list:
                n = PyList_GET_SIZE(params)
                if not (m.lo <= n <= m.hi) or (m.checks and not passes(m.checks, <list>params, n)):
                    value = m.invoke(params, self.transport, cid)
                elif n == 0:
                    value = m.fn()
                elif n == 1:
                    value = m.fn((<list>params)[0])
                elif n == 2:
                    value = m.fn((<list>params)[0], (<list>params)[1])
                else:
                    value = m.fn(*params)
            elif type(params) is dict:
                value = m.invoke(params, self.transport, cid)
            else:
                return self.slow(cid, msg, data, b, idx)  # params of a wrong type: -32600
            reply = None if rid is _NO_ID else result_reply(rid, value)
        except _RPCError as e:
            reply = None if rid is _NO_ID else _error(rid, e.code, e.message, e.data)
            if settle(m, e, start) == O_UNKNOWN:
                self.unknown_methods += 1
        except Exception:
            reply = self.failed(m, rid)
            record(m, O_FAILURE, start)
            return reply
        else:
            record(m, O_SUCCESS, start)
        if bh.failures:
            bh.success()
        return reply

    cdef object slow(self, cid, msg, data, b, idx):
        if msg is None:
            msg = _loads(data)  # scan() accepted it: valid JSON, an object
        return self.call(cid, msg, b, idx)
