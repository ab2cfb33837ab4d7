# cython: freethreading_compatible=False
"""The compiled half of ``fastrpc.client``: one call's request bytes, its deadline and
its reply, for the shape nearly every call has.

``ClientCore`` is the base class of ``fastrpc.client.Client``: the fields a call reads
live here as C struct members, and ``call()`` is a compiled coroutine, so a call costs
no Python frame of fastrpc's on the way out or back. What it does, per call:

* **Request.** ``{"jsonrpc":"2.0","id":N,"method":M,"params":P}`` assembled from
  constant bytes, the id's digits, the method's JSON (encoded once per method name and
  cached) and the params (written here when they are a short array of plain strings,
  ints, booleans and None, else one ``orjson.dumps``): byte for byte what
  ``orjson.dumps`` of the request dict gives (tests check), without the dict.
* **Deadline.** No timer per call: each call stores its deadline, and one timer per
  client (``loop.call_later``) is armed for the earliest deadline only when a call's
  deadline is earlier than the armed check (see ``SLACK`` for the granularity). The
  check expires what is due and re-arms for the next deadline still waiting.
* **Reply.** ``Router`` is the core reactor's ``on_text``/``on_binary`` callback.
  It recognises ``{"jsonrpc":"2.0","id":N,"result":R}`` byte for byte (what every
  fastrpc server sends, and go-ethereum too) for a pending plain call, decodes only the
  result text R (a plain string, an integer, true/false/null here, anything else with
  orjson, which also proves that nothing follows it) and settles the call. Any other
  message (an error, a notification, a batch, other spacing or key order, an unknown
  id, a subscribe call's reply) goes to ``Client._on_message`` whole, so each rule of
  the reply handling is written once, in ``client.py``; tests require the same
  outcome from both paths for a corpus and generated replies.
* **Waiting.** The call is its own future (``Call``: the part of the asyncio Future
  protocol a Task uses), so no asyncio future is made per call, and a settled call
  does not schedule its task with a ``loop.call_soon`` of its own: the loop's
  ``Wakeups`` wakes every task whose call was settled in one turn with one loop
  callback, and the requests those tasks make meanwhile leave together.

No JSON lives in ``_core`` (it owns bytes only); this module owns the client's one
hot call, as ``_fastcall`` owns the server's.
"""
cimport cython
from cpython.dict cimport PyDict_GetItem, PyDict_DelItem, PyDict_SetItem, PyDict_Size
from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromLongLong
from cpython.unicode cimport PyUnicode_DecodeASCII
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.contextvars cimport PyContext_CopyCurrent, PyContext_Enter, PyContext_Exit
from libc.string cimport memcpy, memcmp, strcmp

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    const char* PyUnicode_1BYTE_DATA_ "(const char*)PyUnicode_1BYTE_DATA"(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    # The await protocol's C slot (Python 3.10+): ``await`` on a Call, from a Python
    # or Cython coroutine or a Task, resumes through it without raising StopIteration.
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    ctypedef PySendResult (*sendfunc)(PyObject*, PyObject*, PyObject**) noexcept
    ctypedef struct PyAsyncMethods:
        sendfunc am_send
    ctypedef struct AsyncTypeObject "PyTypeObject":
        PyAsyncMethods* tp_as_async
    void PyErr_SetObject_ "PyErr_SetObject"(PyObject* type, PyObject* value)
    void Py_INCREF_ "Py_INCREF"(PyObject* o)
    ctypedef struct PyMethodDef_ "PyMethodDef":
        const char* ml_name
    ctypedef struct PyCFunctionObject:
        PyMethodDef_* m_ml
    bint PyCFunction_Check(object o)
    PyObject* PyCFunction_GET_SELF(object o)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    enum: CLOCK_MONOTONIC

import logging
from asyncio import CancelledError, InvalidStateError, Task
from collections.abc import Mapping, Sequence

import orjson

from .errors import CallTimeout

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _DecodeError = orjson.JSONDecodeError
cdef object _CancelledError = CancelledError
cdef object _InvalidStateError = InvalidStateError
cdef object _Task = Task
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


cdef object NOT_SCALAR = object()  # scalar_json: not one of the values it decodes


cdef object scalar_json(const unsigned char* p, Py_ssize_t m):
    """The value of the JSON text ``p[:m]`` when it is one of the results most calls
    return (a string of printable ASCII without escapes, such as a hex quantity; an
    integer of at most 18 digits; true, false, null), exactly as ``orjson.loads``
    gives it; else NOT_SCALAR (and orjson decides). Decoding these without orjson
    skips its parser set-up, a buffer allocation per call."""
    cdef Py_ssize_t i
    cdef long long v = 0
    cdef bint neg
    cdef unsigned char c
    if m <= 0:
        return NOT_SCALAR
    c = p[0]
    if c == 34:  # '"'
        if m < 2 or p[m - 1] != 34:
            return NOT_SCALAR
        for i in range(1, m - 1):
            c = p[i]
            if c < 32 or c > 127 or c == 34 or c == 92:  # control, non-ASCII, '"', '\\'
                return NOT_SCALAR
        return PyUnicode_DecodeASCII(<const char*>p + 1, m - 2, NULL)
    neg = c == 45  # '-'
    i = 1 if neg else 0
    if i < m and p[i] == 48:  # '0': alone (JSON has no leading zeros)
        return 0 if i + 1 == m else NOT_SCALAR
    if i == m or m - i > 18:
        return NOT_SCALAR
    while i < m:
        c = p[i]
        if not 48 <= c <= 57:
            break
        v = v * 10 + (c - 48)
        i += 1
    if i == m:
        return PyLong_FromLongLong(-v if neg else v)
    if m == 4 and memcmp(p, b"true", 4) == 0:
        return True
    if m == 4 and memcmp(p, b"null", 4) == 0:
        return None
    if m == 5 and memcmp(p, b"false", 5) == 0:
        return False
    return NOT_SCALAR


def _scalar_json(data: bytes):
    """``scalar_json`` for tests: (True, value) when decoded here, else (False, None)."""
    v = scalar_json(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    return (False, None) if v is NOT_SCALAR else (True, v)


cdef enum:
    MAX_SIMPLE_PARAMS = 16  # longer arrays go to orjson


cdef inline PyObject* param_item(object params, Py_ssize_t i) noexcept:
    return PyTuple_GET_ITEM(params, i) if type(params) is tuple else PyList_GET_ITEM(params, i)


cdef Py_ssize_t simple_value_size(object v) noexcept:
    """Bytes of the JSON of ``v`` when this module writes it itself (``write_simple``):
    an exact str of printable ASCII without '"' or '\\' (orjson escapes nothing
    there), an exact int in the C long long range, True, False, None; else -1."""
    cdef Py_ssize_t n, i
    cdef const char* p
    cdef int overflow
    cdef long long x
    cdef char digits[24]
    if type(v) is str:
        if not PyUnicode_IS_COMPACT_ASCII(v):
            return -1
        p = PyUnicode_1BYTE_DATA_(v)
        n = PyUnicode_GET_LENGTH(v)
        for i in range(n):
            if p[i] < 32 or p[i] == 34 or p[i] == 92:  # (ASCII: p[i] <= 127)
                return -1
        return n + 2
    if type(v) is int:
        x = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow:
            return -1
        return format_int(digits, x)
    if v is True or v is None:
        return 4
    if v is False:
        return 5
    return -1


cdef Py_ssize_t simple_params_size(object params) noexcept:
    """Bytes of the JSON array of a tuple or list of at most MAX_SIMPLE_PARAMS simple
    values (``simple_value_size``), else -1: orjson encodes it."""
    cdef Py_ssize_t k, n, size, m
    if type(params) is tuple:
        n = PyTuple_GET_SIZE(params)
    elif type(params) is list:
        n = PyList_GET_SIZE(params)
    else:
        return -1
    if n > MAX_SIMPLE_PARAMS:
        return -1
    size = 2 + (n - 1 if n else 0)  # brackets, commas
    for k in range(n):
        m = simple_value_size(<object>param_item(params, k))
        if m < 0:
            return -1
        size += m
    return size


cdef char* write_simple(char* o, object params) noexcept:
    """Write the array ``simple_params_size`` measured; returns the end."""
    cdef Py_ssize_t k, n, m
    cdef int overflow
    cdef object v
    n = PyTuple_GET_SIZE(params) if type(params) is tuple else PyList_GET_SIZE(params)
    o[0] = 91  # '['
    o += 1
    for k in range(n):
        if k:
            o[0] = 44  # ','
            o += 1
        v = <object>param_item(params, k)
        if type(v) is str:
            m = PyUnicode_GET_LENGTH(v)
            o[0] = 34
            memcpy(o + 1, PyUnicode_1BYTE_DATA_(v), m)
            o[m + 1] = 34
            o += m + 2
        elif type(v) is int:
            o += format_int(o, PyLong_AsLongLongAndOverflow(v, &overflow))
        elif v is True:
            memcpy(o, b"true", 4)
            o += 4
        elif v is None:
            memcpy(o, b"null", 4)
            o += 4
        else:
            memcpy(o, b"false", 5)
            o += 5
    o[0] = 93  # ']'
    return o + 1


cpdef bytes request_bytes(long long rid, object method, object params):
    """``orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params":
    params})``, byte for byte, without the dict (``rid`` >= 0). A tuple of params is
    encoded as the array it stands for (as ``list(params)`` would be). A short array
    of simple values (strings of plain ASCII, ints, true, false, null: most calls'
    params) is written here; anything else is one ``orjson.dumps`` of the params."""
    cdef bytes mj = method_json(method)
    cdef Py_ssize_t pn = simple_params_size(params)
    cdef bytes pj = None
    if pn < 0:
        pj = _dumps(params)
        pn = PyBytes_GET_SIZE(pj)
    cdef char digits[24]
    cdef Py_ssize_t idn = format_int(digits, rid)
    cdef Py_ssize_t mn = PyBytes_GET_SIZE(mj)
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
    if pj is None:
        o = write_simple(o, params)
    else:
        memcpy(o, PyBytes_AS_STRING(pj), pn)
        o += pn
    o[0] = 125  # '}'
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


cdef enum:
    # Call.state, while the call is its own future (Call.own)
    PENDING = 0
    FINISHED = 1       # value or exc is the outcome
    CANCELLED = 2
    # how start() waits for the reply
    WAIT_NONE = 0      # nobody: the reply is dropped
    WAIT_FUTURE = 1    # an asyncio future of the loop (Call.fut)
    WAIT_OWN = 2       # the Call itself (ClientCore.call awaits it)


@cython.final
cdef class Wakeups:
    """The calls of one event loop settled since its last turn, and the one loop
    callback that wakes their waiters together.

    A settled asyncio future schedules each of its callbacks with its own
    ``loop.call_soon`` (a Handle per call, Python code on asyncio's loop); a call
    that is its own future (``Call.own``) is appended here instead, and one
    ``call_soon`` per turn runs every waiter, in the order the calls were settled,
    each in its own context, as ``call_soon`` would (never from inside the code that
    settled it). While they run, the reactor's sends are held, so the requests the
    woken tasks make go out together at the end (one send per connection) rather
    than on a further turn."""

    cdef list due          # Calls settled (or cancelled) whose callbacks have not run
    cdef bint scheduled    # the loop callback is queued
    cdef readonly object loop
    cdef object call_soon
    cdef object reactor    # its sends are held while waiters run; None: no reactor
    cdef object resumed    # a future of the loop, done with None (see Call.run_callbacks)

    def __init__(self, loop, reactor=None):
        self.due = []
        self.loop = loop
        self.call_soon = loop.call_soon
        self.reactor = reactor
        self.resumed = loop.create_future()
        self.resumed.set_result(None)

    cdef int add(self, Call call) except -1:
        self.due.append(call)
        if not self.scheduled:
            self.call_soon(self)  # (raises once the loop is closed, as a future's would)
            self.scheduled = True
        return 0

    def __call__(self):
        """The loop callback: run the callbacks of every call settled meanwhile."""
        cdef list due = self.due
        cdef Py_ssize_t i = 0, n = len(due)
        self.due = []
        self.scheduled = False
        held = self.reactor is not None and self.reactor.hold_sends()
        try:
            while i < n:
                (<Call>due[i]).run_callbacks()
                i += 1
        except BaseException:
            # SystemExit or KeyboardInterrupt out of a callback (the rest are caught
            # and reported): the calls not reached yet still run, on the next turn.
            self.due[:0] = due[i + 1:]
            if self.due and not self.scheduled:
                self.call_soon(self)
                self.scheduled = True
            raise
        finally:
            if held:
                self.reactor.release_sends()


cdef PyMethodDef_* _wakeup_def = NULL  # the C Task's wakeup, once seen


cdef bint is_task_wakeup(object fn):
    """Whether ``fn`` is a C ``asyncio.Task``'s wakeup callback (what a Task adds to
    the future it waits on)."""
    global _wakeup_def
    if not PyCFunction_Check(fn):
        return False
    cdef PyMethodDef_* ml = (<PyCFunctionObject*><PyObject*>fn).m_ml
    if ml == _wakeup_def:
        return True
    if _wakeup_def == NULL and strcmp(ml.ml_name, "task_wakeup") == 0 and \
            type(<object>PyCFunction_GET_SELF(fn)) is _Task:
        _wakeup_def = ml
        return True
    return False


cdef int _run_in(object ctx, object fn, object arg, object loop) except -1:
    """``ctx.run(fn, arg)`` with asyncio's Handle rules: an exception goes to the
    loop's exception handler, except SystemExit and KeyboardInterrupt."""
    PyContext_Enter(ctx)
    try:
        fn(arg)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as e:
        loop.call_exception_handler({
            "message": f"Exception in callback {fn!r}({arg!r})", "exception": e})
    finally:
        PyContext_Exit(ctx)
    return 0


@cython.final
@cython.freelist(64)
cdef class Call:
    """A request waiting for its reply (one per id in ``Client._pending``).

    Its waiter is either ``fut``, an asyncio future (a batch's calls, subscribe and
    unsubscribe calls: ``ClientCore._request``), or, for ``ClientCore.call``, the
    call itself (``own``): the object the call's task awaits, with the part of the
    asyncio Future protocol a Task uses (``_asyncio_future_blocking``, ``get_loop``,
    ``add_done_callback``, ``result``, ``cancel``, ...). That saves a future per call
    and lets the loop's ``Wakeups`` wake every task whose reply came in one turn with
    one loop callback. ``settle()`` resolves either kind."""

    cdef public object fut       # the asyncio future waiting; None: none (own, or nobody waits)
    cdef public object method
    cdef public object group     # the Batch this call belongs to, or None
    cdef public object hook      # runs on a result, synchronously, before the future is set
    cdef public long long rid
    cdef public double timeout   # seconds (for CallTimeout's message)
    cdef public double deadline  # monotonic() seconds; INF: not swept (none, or the batch's timer)
    # The call as its own future (own); unused otherwise.
    cdef readonly bint own
    cdef int state               # PENDING, FINISHED or CANCELLED
    cdef bint queued             # in wakeups.due: its callbacks run on the loop's next turn
    cdef object value            # FINISHED without exc: the result
    cdef object exc              # FINISHED: the exception, or None; CANCELLED: the CancelledError
    cdef object cb0              # the first done callback (the task's wakeup), or None
    cdef object ctx0             # its context
    cdef list more               # further (callback, context) pairs, or None
    cdef Wakeups wakeups         # the loop's queue of settled calls
    cdef public bint _asyncio_future_blocking  # asyncio's protocol: set while a task is to wait on it

    def __init__(self, fut, method, group=None, hook=None):
        self.fut = fut
        self.method = method
        self.group = group
        self.hook = hook
        self.rid = 0
        self.timeout = INF
        self.deadline = INF

    cpdef settle(self, value=None, exc=None):
        """Resolve the waiter with ``value`` (or ``exc``); nothing when it is resolved
        or cancelled already, or when nobody waits."""
        if self.own:
            self.finish(value, exc)
            return
        fut = self.fut
        if fut is None or fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    cdef int finish(self, object value, object exc) except -1:
        if self.state != PENDING:
            return 0
        self.state = FINISHED
        self.value = value
        self.exc = exc
        if self.cb0 is not None or self.more is not None:
            self.schedule()
        return 0

    cdef inline int schedule(self) except -1:
        if not self.queued:
            self.queued = True
            self.wakeups.add(self)
        return 0

    cdef int run_callbacks(self) except -1:
        """Run (and forget) the done callbacks, each in its context (Wakeups)."""
        cdef list more = self.more
        cb, ctx = self.cb0, self.ctx0
        self.queued = False
        self.cb0 = self.ctx0 = None
        self.more = None
        loop = self.wakeups.loop
        if cb is not None:
            # A C Task's wakeup only asks the future it gets for its outcome (via
            # result() on any other type than an asyncio Future: a method lookup and
            # a call) and then resumes the task's coroutine, which takes the value
            # from this call (__next__ / _call_send). For a result, hand it a future
            # that is done with None instead: the same resumption without the lookup.
            if self.state == FINISHED and self.exc is None and is_task_wakeup(cb):
                _run_in(ctx, cb, self.wakeups.resumed, loop)
            else:
                _run_in(ctx, cb, self, loop)
        if more is not None:
            for cb, ctx in more:
                _run_in(ctx, cb, self, loop)
        return 0

    # --- the asyncio Future protocol (own calls) ---------------------------------

    def __await__(self):
        if not self.own:
            raise TypeError("a call with a future of its own is awaited through that future")
        return self

    def __iter__(self):
        return self.__await__()

    def __next__(self):
        # (Only where am_send is not used: _call_send is the usual way in.)
        if self.state == PENDING:
            self._asyncio_future_blocking = True
            return self  # to the task: it waits for our done callback
        if self.exc is not None:
            raise self.exc
        raise StopIteration(self.value)

    def get_loop(self):
        return self.wakeups.loop

    def done(self):
        return self.state != PENDING

    def cancelled(self):
        return self.state == CANCELLED

    def result(self):
        if self.state == PENDING:
            raise _InvalidStateError("Result is not ready.")
        if self.exc is not None:
            raise self.exc
        return self.value

    def exception(self):
        if self.state == PENDING:
            raise _InvalidStateError("Exception is not set.")
        if self.state == CANCELLED:
            raise self.exc
        return self.exc

    def cancel(self, msg=None):
        """Cancel the wait (the task awaiting it was cancelled): False when done."""
        if self.state != PENDING:
            return False
        self.state = CANCELLED
        self.exc = _CancelledError() if msg is None else _CancelledError(msg)
        if self.cb0 is not None or self.more is not None:
            self.schedule()
        return True

    def add_done_callback(self, fn, *, context=None):
        if context is None:
            context = PyContext_CopyCurrent()
        if self.cb0 is None and self.more is None:
            self.cb0 = fn
            self.ctx0 = context
        else:
            if self.more is None:
                self.more = []
            self.more.append((fn, context))
        if self.state != PENDING:
            self.schedule()

    def remove_done_callback(self, fn):
        cdef int n = 0
        if self.cb0 is not None and self.cb0 == fn:
            self.cb0 = self.ctx0 = None
            n += 1
        if self.more is not None:
            keep = [(f, c) for f, c in self.more if f != fn]
            n += len(self.more) - len(keep)
            self.more = keep or None
        return n

    def __repr__(self):
        if not self.own:
            return f"<Call id={self.rid} {self.method!r}>"
        state = ("pending", "finished", "cancelled")[self.state]
        return f"<Call id={self.rid} {self.method!r} {state}>"


cdef PySendResult _call_send(PyObject* o, PyObject* arg, PyObject** out) noexcept:
    """``Call``'s am_send: the next step of ``await call`` without an exception for
    the result (CPython's own futures resume the same way)."""
    cdef Call c = <Call>o
    cdef object v, t
    if c.state == PENDING:
        c._asyncio_future_blocking = True
        Py_INCREF_(o)
        out[0] = o
        return PYGEN_NEXT
    if c.exc is None:
        v = c.value
        Py_INCREF_(<PyObject*>v)
        out[0] = <PyObject*>v
        return PYGEN_RETURN
    v = c.exc
    t = type(v)
    PyErr_SetObject_(<PyObject*>t, <PyObject*>v)
    out[0] = NULL
    return PYGEN_ERROR


(<AsyncTypeObject*>Call).tp_as_async.am_send = _call_send


cdef class ClientCore:
    """Base of ``fastrpc.client.Client``: the fields a call and its reply touch, and
    the compiled ``call``. ``client.py`` owns their meaning; see its comments."""

    cdef public object _send              # reactor.send while open, else None
    cdef public object _cid               # the core's connection id
    cdef public int _state                # _NEW .. _CLOSED (client.py)
    cdef public long long _ids            # the last request id used (ids start at 1)
    cdef public dict _pending             # id -> Call
    cdef dict _counters                   # stats() counters (client.py) but these two:
    cdef public long long _calls          # calls sent (counters["calls"])
    cdef public long long _replies        # replies matched to a call (counters["replies"])
    cdef public object _loop
    cdef public object _new_future        # the loop's create_future
    cdef public double _default_timeout   # options.call_timeout; INF for none
    cdef public Wakeups _wakeups          # the loop's (the hub's); made on first use when None
    cdef double check_at                  # monotonic() time the armed check fires; INF: none
    cdef object check_handle              # its TimerHandle

    @property
    def counters(self):
        """The stats() counters (a dict client.py updates in place); ``calls`` and
        ``replies``, counted on every call, are C fields (``_calls``, ``_replies``)
        copied in here when read."""
        d = self._counters
        d["calls"] = self._calls
        d["replies"] = self._replies
        return d

    @counters.setter
    def counters(self, dict value):
        self._counters = value

    def __cinit__(self):
        self._counters = {}
        self._pending = {}
        self._state = 0
        self._ids = 0
        self._default_timeout = INF
        self.check_at = INF

    cdef Call start(self, object method, object params, object timeout, object hook, int wait):
        """Encode, register and queue one call (the caller ensured the state is open);
        ``wait``: WAIT_NONE, WAIT_FUTURE or WAIT_OWN."""
        cdef long long rid = self._ids + 1
        cdef bytes data = request_bytes(rid, method, params)  # TypeError: nothing sent
        cdef double t, d, n
        cdef Call call = Call.__new__(Call)
        self._ids = rid
        if wait == WAIT_OWN:
            if self._wakeups is None:
                self._wakeups = Wakeups(self._loop)
            call.own = True
            call.wakeups = self._wakeups
        elif wait == WAIT_FUTURE:
            call.fut = self._new_future()
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
        self._calls += 1
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
        cdef Call call = self.start(method, params, timeout, hook, WAIT_FUTURE if wait else WAIT_NONE)
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
                                 timeout, None, WAIT_OWN)
        try:
            return await c
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
        value = scalar_json(d + j, n - 1 - j)
        if value is NOT_SCALAR:
            try:
                value = _loads(PyBytes_FromStringAndSize(<const char*>d + j, n - 1 - j))
            except _DecodeError:
                return False  # not one JSON value then the end: the full decode gives the answer
        PyDict_DelItem(self._pending, key)
        self._replies += 1
        if call.own:
            call.finish(value, None)
        else:
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
    ``Router(clients).deliver(cid, payload)`` (a bound method: the core calls it
    without building an argument tuple, as it would for ``__call__``). ``clients`` is
    the hub's dict cid -> Client (the same object: later additions are seen). Never
    raises (the core would drop the connection): a failure is logged."""

    cdef dict clients

    def __init__(self, dict clients):
        self.clients = clients

    def deliver(self, cid, payload):
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
