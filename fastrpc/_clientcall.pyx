# cython: freethreading_compatible=False
"""The compiled half of ``fastrpc.client``: one call's request bytes, its deadline and
its reply, for the shape nearly every call has.

``ClientCore`` is the base class of ``fastrpc.client.Client``: the fields a call reads
live here as C struct members, and ``call()`` is a compiled coroutine, so a call costs
no Python frame of fastrpc's on the way out or back. What it does, per call:

* **Request.** ``{"jsonrpc":"2.0","id":N,"method":M,"params":P}`` assembled from
  constant bytes, the id's digits, the method's JSON (encoded once per method name and
  cached) and one ``orjson.dumps`` of the params: byte for byte what
  ``orjson.dumps`` of the request dict gives (a test checks), without the dict.
* **Deadline.** No timer per call: each call stores its deadline, and one timer per
  client (``loop.call_later``) is armed for the earliest deadline only when a call's
  deadline is earlier than the armed check (see ``SLACK`` for the granularity). The
  check expires what is due and re-arms for the next deadline still waiting.
* **Reply.** ``Router`` is the core reactor's ``on_text``/``on_binary`` callback.
  It recognises ``{"jsonrpc":"2.0","id":N,"result":R}`` byte for byte (what every
  fastrpc server sends, and go-ethereum too) for a pending plain call, decodes only the
  result text R with orjson (which also proves that nothing follows it) and settles
  the future. Any other message (an error, a notification, a batch, other spacing or
  key order, an unknown id, a subscribe call's reply) goes to ``Client._on_message``
  whole, so each rule of the reply handling is written once, in ``client.py``; tests
  require the same outcome from both paths for a corpus and generated replies.

No JSON lives in ``_core`` (it owns bytes only); this module owns the client's one
hot call, as ``_fastcall`` owns the server's.
"""
cimport cython
from cpython.dict cimport PyDict_GetItem, PyDict_DelItem, PyDict_SetItem, PyDict_Size
from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_FromLongLong
from libc.string cimport memcpy, memcmp

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    enum: CLOCK_MONOTONIC

import logging
from asyncio import CancelledError
from collections.abc import Mapping, Sequence

import orjson

from .errors import CallTimeout

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _DecodeError = orjson.JSONDecodeError
cdef object _CancelledError = CancelledError
cdef object _CallTimeout = CallTimeout
cdef object _Mapping = Mapping
cdef object _Sequence = Sequence
cdef object _log = logging.getLogger("fastrpc.client")
cdef double INF = float("inf")

cdef enum:
    OPEN = 2                # client._OPEN (a unit test checks that they agree)
    MAX_CACHED_METHODS = 4096   # method names whose JSON is kept (names, not calls)
    MAX_ID_DIGITS = 18      # longer reply ids take the general path

#: ``client._OPEN`` as this module sees it.
STATE_OPEN = OPEN

#: A call expires at most ``min(SLACK_FRACTION * timeout, SLACK_MAX)`` seconds after
#: its timeout (never before it): the check is armed half-way into that window.
SLACK_FRACTION = 0.1
SLACK_MAX = 0.1   # seconds
cdef double SLACK_F = SLACK_FRACTION
cdef double SLACK_M = SLACK_MAX

# The request's and the reply's common opening; then the request's / reply's member.
cdef const char* HEAD = b'{"jsonrpc":"2.0","id":'
cdef const char* METHOD = b',"method":'
cdef const char* PARAMS = b',"params":'
cdef const char* RESULT = b',"result":'
DEF HEAD_LEN = 22
DEF KEY_LEN = 10   # each of METHOD, PARAMS, RESULT

cdef dict _method_json = {}  # method name -> its JSON text (bytes)
cdef bytes EMPTY_ARRAY = b"[]"


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def now() -> float:
    """The clock call deadlines are kept in (CLOCK_MONOTONIC, seconds)."""
    return monotonic()


cdef inline double slack(double timeout) noexcept:
    cdef double s = timeout * SLACK_F
    return s if s < SLACK_M else SLACK_M


include "_digits.pxi"


cdef bytes method_json(object method):
    """The JSON text of a method name, cached for str names."""
    cdef PyObject* p
    cdef bytes mj
    if type(method) is str:
        p = PyDict_GetItem(_method_json, method)
        if p != NULL:
            return <bytes>p
        mj = _dumps(method)
        if PyDict_Size(_method_json) < MAX_CACHED_METHODS:
            PyDict_SetItem(_method_json, method, mj)
        return mj
    return _dumps(method)  # what the request dict would hold (or TypeError)


cpdef bytes request_bytes(long long rid, object method, object params):
    """``orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params":
    params})``, byte for byte, without the dict (``rid`` >= 0). A tuple of params is
    encoded as the array it stands for (as ``list(params)`` would be)."""
    cdef bytes mj = method_json(method)
    cdef bytes pj = EMPTY_ARRAY if (type(params) is tuple and not params) else _dumps(params)
    cdef char digits[24]
    cdef Py_ssize_t idn = format_int(digits, rid)
    cdef Py_ssize_t mn = PyBytes_GET_SIZE(mj), pn = PyBytes_GET_SIZE(pj)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HEAD_LEN + idn + KEY_LEN + mn + KEY_LEN + pn + 1)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, HEAD, HEAD_LEN)
    o += HEAD_LEN
    memcpy(o, digits, idn)
    o += idn
    memcpy(o, METHOD, KEY_LEN)
    o += KEY_LEN
    memcpy(o, PyBytes_AS_STRING(mj), mn)
    o += mn
    memcpy(o, PARAMS, KEY_LEN)
    o += KEY_LEN
    memcpy(o, PyBytes_AS_STRING(pj), pn)
    o[pn] = 125  # '}'
    return out


def norm_params(tuple args, object params):
    """The params member of a call made as ``call(method, *args, params=params)``."""
    if params is None:
        return list(args)
    if args:
        raise TypeError("pass params either positionally or as params=, not both")
    if type(params) is dict or type(params) is list:
        return params
    if isinstance(params, _Mapping):
        return dict(params)
    if isinstance(params, (tuple, _Sequence)) and not isinstance(params, (str, bytes)):
        return list(params)
    raise TypeError("params must be a dict (named) or a list (positional)")


@cython.final
@cython.freelist(64)
cdef class Call:
    """A request waiting for its reply (one per id in ``Client._pending``)."""

    cdef public object fut       # None: nobody waits (an unsubscribe sent on the way out)
    cdef public object method
    cdef public object group     # the Batch this call belongs to, or None
    cdef public object hook      # runs on a result, synchronously, before the future is set
    cdef public long long rid
    cdef public double timeout   # seconds (for CallTimeout's message)
    cdef public double deadline  # monotonic() seconds; INF: not swept (none, or the batch's timer)

    def __init__(self, fut, method, group=None, hook=None):
        self.fut = fut
        self.method = method
        self.group = group
        self.hook = hook
        self.rid = 0
        self.timeout = INF
        self.deadline = INF

    cpdef settle(self, value=None, exc=None):
        fut = self.fut
        if fut is None or fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


cdef class ClientCore:
    """Base of ``fastrpc.client.Client``: the fields a call and its reply touch, and
    the compiled ``call``. ``client.py`` owns their meaning; see its comments."""

    cdef public object _send              # reactor.send while open, else None
    cdef public object _cid               # the core's connection id
    cdef public int _state                # _NEW .. _CLOSED (client.py)
    cdef public long long _ids            # the last request id used (ids start at 1)
    cdef public dict _pending             # id -> Call
    cdef public dict counters             # stats() counters (client.py)
    cdef public object _loop
    cdef public object _new_future        # the loop's create_future
    cdef public double _default_timeout   # options.call_timeout; INF for none
    cdef double check_at                  # monotonic() time the armed check fires; INF: none
    cdef object check_handle              # its TimerHandle

    def __cinit__(self):
        self._pending = {}
        self._state = 0
        self._ids = 0
        self._default_timeout = INF
        self.check_at = INF

    cdef Call start(self, object method, object params, object timeout, object hook, bint wait):
        """Encode, register and queue one call (the caller ensured the state is open)."""
        cdef long long rid = self._ids + 1
        cdef bytes data = request_bytes(rid, method, params)  # TypeError: nothing sent
        cdef double t, d, n
        cdef Call call = Call.__new__(Call)
        self._ids = rid
        call.fut = self._new_future() if wait else None
        call.method = method
        call.hook = hook
        call.rid = rid
        if timeout is None:
            t = self._default_timeout
        else:
            t = timeout
        call.timeout = t
        if t < INF:
            n = monotonic()
            d = n + t
            call.deadline = d
            if self.check_at > d + slack(t):
                self.arm(d + 0.5 * slack(t), n)
        else:
            call.deadline = INF
        key = PyLong_FromLongLong(rid)
        PyDict_SetItem(self._pending, key, call)
        if not self._send(self._cid, data):
            PyDict_DelItem(self._pending, key)
            raise self._lost()
        counters = self.counters
        counters["calls"] += 1
        return call

    cdef arm(self, double at, double n):
        if self.check_handle is not None:
            self.check_handle.cancel()
        delay = at - n
        self.check_at = at
        self.check_handle = self._loop.call_later(delay if delay > 0.001 else 0.001, self._check_deadlines)

    def _cancel_deadlines(self):
        """Disarm the deadline check (the connection ended; nothing is pending)."""
        if self.check_handle is not None:
            self.check_handle.cancel()
            self.check_handle = None
        self.check_at = INF

    def _check_deadlines(self):
        """The deadline check: expire the calls due, re-arm for the next one."""
        cdef double n = monotonic(), nxt = INF, at
        cdef Call call
        cdef list due = []
        self.check_handle = None
        self.check_at = INF
        for c in self._pending.values():
            call = <Call>c
            if call.deadline <= n:
                due.append(call)
            elif call.deadline < INF:
                at = call.deadline + 0.5 * slack(call.timeout)
                if at < nxt:
                    nxt = at
        for c in due:
            call = <Call>c
            if self._pending.pop(call.rid, None) is call:
                self.counters["timeouts"] += 1
                call.settle(None, _CallTimeout(call.method, call.timeout))
        if nxt < INF:  # calls still waiting (also while closing)
            self.arm(nxt, n)

    def _request(self, method, params, timeout, hook=None, wait=True):
        """Send one call; returns its id and the future of its result (None with
        ``wait=False``: the reply is dropped when it comes)."""
        if self._send is None or self._state != OPEN:
            raise self._lost()
        cdef Call call = self.start(method, params, timeout, hook, wait)
        return call.rid, call.fut

    async def call(self, method, *args, params=None, timeout=None):
        """Call ``method`` and return its result.

        Params go positionally (``call("eth_getBalance", addr, "latest")`` sends
        ``"params": [addr, "latest"]``) or as ``params=`` (a dict for named params, a
        list for a positional array built elsewhere); never both. ``timeout``: seconds,
        default ``call_timeout``; ``float("inf")`` waits for ever.

        Raises ``RPCError`` (error reply), ``CallTimeout``, ``ConnectionLost``,
        ``InvalidReply``; ``TypeError`` for params orjson cannot encode.
        """
        if self._send is None or self._state != OPEN:
            raise self._lost()
        cdef Call c = self.start(method, args if params is None else norm_params(args, params),
                                 timeout, None, True)
        try:
            return await c.fut
        except _CancelledError:
            self._pending.pop(c.rid, None)  # a reply that comes now is a late one
            raise

    cdef bint fast_reply(self, bytes data) except -1:
        """Settle the call ``data`` answers if it has the common reply layout; False:
        it has not (or answers no plain call waiting here): the general path decides."""
        cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t i = HEAD_LEN, j
        cdef long long v = 0
        cdef PyObject* p
        cdef Call call
        if n < HEAD_LEN + 1 + KEY_LEN + 2 or d[n - 1] != 125 or memcmp(d, HEAD, HEAD_LEN) != 0:
            return False
        if not (49 <= d[i] <= 57):  # ids we send are positive: no sign, no leading zero
            return False
        j = i
        while j < n and 48 <= d[j] <= 57 and j - i < MAX_ID_DIGITS:
            v = v * 10 + (d[j] - 48)
            j += 1
        if j + KEY_LEN >= n or memcmp(d + j, RESULT, KEY_LEN) != 0:
            return False
        key = PyLong_FromLongLong(v)
        p = PyDict_GetItem(self._pending, key)
        if p == NULL:
            return False
        call = <Call>p
        if call.hook is not None:
            return False
        j += KEY_LEN
        try:
            value = _loads(PyBytes_FromStringAndSize(<const char*>d + j, n - 1 - j))
        except _DecodeError:
            return False  # not one JSON value then the end: the full decode gives the answer
        PyDict_DelItem(self._pending, key)
        counters = self.counters
        counters["replies"] += 1
        fut = call.fut
        if fut is not None and not fut.done():
            fut.set_result(value)
        return True

    def _fast_reply(self, data):
        """``fast_reply`` for tests: True when the fast path settled the reply."""
        return type(data) is bytes and self.fast_reply(data)


@cython.final
cdef class Router:
    """The core reactor's ``on_text``/``on_binary`` callback for a hub's clients:
    ``Router(clients)(cid, payload)``. ``clients`` is the hub's dict cid -> Client (the
    same object: later additions are seen). Never raises (the core would drop the
    connection): a failure is logged."""

    cdef dict clients

    def __init__(self, dict clients):
        self.clients = clients

    def __call__(self, cid, payload):
        cdef PyObject* p = PyDict_GetItem(self.clients, cid)
        if p == NULL:
            return None
        client = <object>p
        try:
            if type(payload) is bytes and isinstance(client, ClientCore) and \
                    (<ClientCore>client).fast_reply(<bytes>payload):
                return None
            client._on_message(payload)
        except Exception:
            _log.exception("error handling a message")
        return None
