"""The method registry: namespaces, handlers and their parameter plans.

Registering::

    registry = Registry()

    @registry.method("eth_blockNumber")
    def block_number() -> str: ...

    class Net:
        def version(self) -> str: ...
        async def peerCount(self) -> int: ...
    registry.register("net", Net())            # net_version, net_peerCount

    registry.service("debug", threaded=True, timeout=5.0, max_concurrency=4)

Method names are ``<namespace>_<name>``; a namespace is letters and digits (no ``_``).
``register`` exposes every public (not ``_``-prefixed) function or method of the
object under its own name (``rename=camel_case`` turns ``get_balance`` into
``getBalance``); for a module, only functions defined in that module. Registering a
name twice is an error. Handlers are plain functions or ``async def`` coroutine
functions (a function that merely *returns* an awaitable is treated as synchronous).

The namespace allowlist (``Registry(namespaces=[...])`` or ``expose``) decides which
registered namespaces are served; the others answer -32601, as if absent.

``add_rpc_modules()`` serves go-ethereum's ``rpc_modules``: ``{"<namespace>": "1.0", ...}``
for every exposed namespace with a method, ``rpc`` included. As in go-ethereum the ``rpc``
namespace is built in: exposed whatever the allowlist, and reserved (``add`` refuses it).

Parameter plans
    Each handler's signature is inspected once, at registration, into a ``Plan``. Per
    request the plan maps the JSON ``params`` onto the callable:

    * array params fill the positional parameters in order (keyword-only parameters then
      keep their defaults); object params are matched by name. ``*args`` takes extra
      array items, ``**kwargs`` extra object members.
    * missing required argument, too many array items, unknown member, or a mistyped
      argument → -32602 whose message names the argument and the problem.
    * the type check looks at simple annotations only, by the exact type orjson decoded:
      ``int`` (not bool, not 1.0), ``float`` (int or float), ``str``, ``bool``, ``list``
      (and ``list[X]``: the items are not checked), ``dict`` (and ``dict[K, V]``),
      ``None``, and unions of these (``Optional[int]``, ``int | str``). Any other
      annotation (``Any``, ``tuple``, classes, ``Literal``, ...) and unannotated
      parameters are passed through unchecked. String annotations are resolved at
      registration; one that cannot be resolved is unchecked.
    * a parameter annotated with ``Context`` is not an RPC parameter: it receives a
      per-request ``Context`` (connection id, peer address, request headers). The object
      exists only for handlers that declare it.
"""
from __future__ import annotations

import functools
import inspect
import re
import sys
import types
import typing
from typing import Any, Callable, Iterable, Iterator

from ._fastcall import MethodCore
from .errors import InvalidParams
from .isolation import Bulkhead
from .jsonrpc import NO_PARAMS

# Method kinds: how the dispatcher runs a method.
SYNC = 0  #: plain function, run inline on the loop
ASYNC = 1  #: coroutine function, one task per call
THREADED = 2  #: plain function of a threaded namespace, run in its thread pool
SUBSCRIBE = 3  #: built-in <ns>_subscribe
UNSUBSCRIBE = 4  #: built-in <ns>_unsubscribe
#: forwardable (fastrpc.cluster): ``route(cid)`` picks, per call, the Method that runs it
#: (the local one, or one that forwards); never on the compiled fast path.
ROUTE = 5

_NAMESPACE_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")
RPC_NAMESPACE = "rpc"  #: go-ethereum's built-in metadata namespace (rpc_modules)
MODULE_VERSION = "1.0"  #: the version go-ethereum reports for every namespace
_UNSET: Any = object()


class _Required:
    __slots__ = ()

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _short(value: object, limit: int = 64) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the per-request context -----------------------------------------------------------


class Context:
    """What a handler may learn about the request it serves.

    Created per request, and only for a handler with a parameter annotated ``Context``.
    ``peer`` and ``headers`` are read from the transport on first access (for threaded
    handlers: on the loop, before the thread starts). ``headers`` is None unless the
    server keeps request headers (``Server(keep_headers=True)``).
    """

    __slots__ = ("cid", "_transport", "_peer", "_headers")

    def __init__(self, transport: Any, cid: int) -> None:
        self.cid = cid  #: the connection id
        self._transport = transport
        self._peer: Any = _UNSET
        self._headers: Any = _UNSET

    @property
    def peer(self) -> tuple[str, int]:
        """(address, port) of the client."""
        if self._peer is _UNSET:
            self._peer = self._transport.peer(self.cid)
        return self._peer  # type: ignore[no-any-return]

    @property
    def headers(self) -> list[tuple[str, str]] | None:
        """The upgrade request's headers, or None if the server does not keep them."""
        if self._headers is _UNSET:
            self._headers = self._transport.headers(self.cid)
        return self._headers  # type: ignore[no-any-return]

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        headers = self.headers
        if headers:
            name = name.lower()
            for key, value in headers:
                if key.lower() == name:
                    return value
        return None

    def _prefetch(self) -> None:
        self.peer  # noqa: B018
        self.headers  # noqa: B018

    def __repr__(self) -> str:
        return f"<Context cid={self.cid}>"


# --- type checks -----------------------------------------------------------------------

_NONE_TYPE = type(None)
_JSON_NAMES: dict[type, str] = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    list: "array",
    dict: "object",
    _NONE_TYPE: "null",
}
_SIMPLE: dict[Any, tuple[frozenset[type], str]] = {
    int: (frozenset((int,)), "integer"),
    float: (frozenset((int, float)), "number"),
    str: (frozenset((str,)), "string"),
    bool: (frozenset((bool,)), "boolean"),
    list: (frozenset((list,)), "array"),
    dict: (frozenset((dict,)), "object"),
    None: (frozenset((_NONE_TYPE,)), "null"),
    _NONE_TYPE: (frozenset((_NONE_TYPE,)), "null"),
}
_STRING_ANNOTATIONS: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "dict": dict,
    "None": None,
}
_UNION_TYPES: tuple[Any, ...] = (typing.Union,)
if sys.version_info >= (3, 10):
    _UNION_TYPES += (types.UnionType,)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    return _JSON_NAMES.get(type(value), type(value).__name__)


def type_check(annotation: Any) -> tuple[frozenset[type], str] | None:
    """(accepted exact types, description) for a simple annotation, or None: unchecked."""
    try:
        simple = _SIMPLE.get(annotation)
    except TypeError:  # unhashable annotation
        return None
    if simple is not None:
        return simple
    origin = typing.get_origin(annotation)
    if origin is None:
        return None
    if origin is list or origin is dict:
        return _SIMPLE[origin]
    if origin is typing.Annotated:
        return type_check(typing.get_args(annotation)[0])
    if origin in _UNION_TYPES:
        allowed: set[type] = set()
        names: list[str] = []
        for arg in typing.get_args(annotation):
            part = type_check(arg)
            if part is None:
                return None  # one unchecked member makes the union unchecked
            allowed |= part[0]
            if part[1] not in names:
                names.append(part[1])
        return frozenset(allowed), " or ".join(names)
    return None


# --- parameter plans -------------------------------------------------------------------


class Param:
    """One parameter of a handler, as the plan sees it."""

    __slots__ = ("name", "index", "allowed", "want", "default", "is_ctx")

    def __init__(
        self,
        name: str,
        index: int,
        check: tuple[frozenset[type], str] | None,
        default: Any,
        is_ctx: bool = False,
    ) -> None:
        self.name = name
        #: position among the RPC-visible positional parameters (-1: keyword-only or ctx)
        self.index = index
        self.allowed = check[0] if check else None
        self.want = check[1] if check else ""
        self.default = default
        self.is_ctx = is_ctx

    def missing(self, by_name: bool) -> InvalidParams:
        if by_name or self.index < 0:
            return InvalidParams(f"missing value for required argument '{self.name}'")
        return InvalidParams(f"missing value for required argument {self.index} ({self.name})")

    def mistyped(self, value: Any, by_name: bool) -> InvalidParams:
        where = f"'{self.name}'" if by_name or self.index < 0 else f"{self.index} ({self.name})"
        return InvalidParams(f"invalid argument {where}: want {self.want}, got {json_type(value)}")

    def __repr__(self) -> str:
        return f"<Param {self.name}>"


def _is_context_annotation(annotation: Any) -> bool:
    if annotation is Context:
        return True
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "Context"
    return False


class Plan:
    """How JSON params map onto one callable; built once by ``Plan.of``."""

    __slots__ = (
        "positional",
        "keyword",
        "names",
        "reserved",
        "varargs",
        "varkw",
        "has_ctx",
        "min_pos",
        "max_pos",
        "checks",
    )

    def __init__(self) -> None:
        self.positional: tuple[Param, ...] = ()  #: positional parameters in order, ctx included
        self.keyword: tuple[Param, ...] = ()  #: keyword-only parameters, ctx included
        self.names: dict[str, Param] = {}  #: RPC-visible parameters by name
        self.reserved: frozenset[str] = frozenset()  #: the ctx parameter's name
        self.varargs = False
        self.varkw = False
        self.has_ctx = False
        self.min_pos = 0  #: required RPC-visible positional parameters
        self.max_pos = 0  #: RPC-visible positional parameters (sys.maxsize with *args)
        self.checks: tuple[tuple[int, frozenset[type]], ...] = ()  #: (index, allowed)

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> "Plan":
        """Inspect ``fn`` (raises TypeError if it has no usable signature)."""
        try:
            sig = inspect.signature(fn, eval_str=True)
        except (NameError, TypeError, SyntaxError):
            try:
                sig = inspect.signature(fn)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"cannot inspect the signature of {fn!r}: {exc}") from None
        except ValueError as exc:
            raise TypeError(f"cannot inspect the signature of {fn!r}: {exc}") from None
        plan = cls()
        positional: list[Param] = []
        keyword: list[Param] = []
        checks: list[tuple[int, frozenset[type]]] = []
        index = 0
        for p in sig.parameters.values():
            ann = p.annotation
            if isinstance(ann, str):
                ann = _STRING_ANNOTATIONS.get(ann, ann)
            default = REQUIRED if p.default is inspect.Parameter.empty else p.default
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                plan.varargs = True
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                plan.varkw = True
                continue
            if _is_context_annotation(ann):
                if plan.has_ctx:
                    raise TypeError(f"{fn!r} declares more than one Context parameter")
                plan.has_ctx = True
                plan.reserved = frozenset((p.name,))
                param = Param(p.name, -1, None, default, is_ctx=True)
                if p.kind is inspect.Parameter.KEYWORD_ONLY:
                    keyword.append(param)
                else:
                    positional.append(param)
                continue
            check = type_check(ann) if ann is not inspect.Parameter.empty else None
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                param = Param(p.name, -1, check, default)
                keyword.append(param)
            else:
                param = Param(p.name, index, check, default)
                positional.append(param)
                if check is not None:
                    checks.append((index, check[0]))
                if default is REQUIRED:
                    plan.min_pos = index + 1
                index += 1
            plan.names[p.name] = param
        plan.positional = tuple(positional)
        plan.keyword = tuple(keyword)
        plan.max_pos = sys.maxsize if plan.varargs else index
        plan.checks = tuple(checks)
        return plan

    @property
    def simple(self) -> bool:
        """Array params can be passed straight through as ``fn(*params)``."""
        return not self.has_ctx and all(p.default is not REQUIRED for p in self.keyword)

    def bind(
        self, params: Any, transport: Any = None, cid: int = 0, eager: bool = False
    ) -> tuple[list[Any], dict[str, Any]]:
        """Map decoded ``params`` (list, dict or NO_PARAMS) onto (args, kwargs).

        Raises ``InvalidParams`` naming the problem. ``eager`` reads the Context's peer
        and headers now (for handlers that will run in a thread)."""
        ctx: Context | None = None
        if self.has_ctx:
            ctx = Context(transport, cid)
            if eager:
                ctx._prefetch()
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        if type(params) is dict:
            names = self.names
            if not self.varkw:
                for key in params:
                    if key not in names:
                        raise InvalidParams(f"unexpected argument '{_short(key)}'")
            for p in self.positional:
                if p.is_ctx:
                    args.append(ctx)
                elif p.name in params:
                    v = params[p.name]
                    if p.allowed is not None and type(v) not in p.allowed:
                        raise p.mistyped(v, True)
                    args.append(v)
                elif p.default is not REQUIRED:
                    args.append(p.default)
                else:
                    raise p.missing(True)
            for p in self.keyword:
                if p.is_ctx:
                    kwargs[p.name] = ctx
                elif p.name in params:
                    v = params[p.name]
                    if p.allowed is not None and type(v) not in p.allowed:
                        raise p.mistyped(v, True)
                    kwargs[p.name] = v
                elif p.default is REQUIRED:
                    raise p.missing(True)
            if self.varkw:
                for key, v in params.items():
                    if key not in names:
                        if key in self.reserved:
                            raise InvalidParams(f"unexpected argument '{_short(key)}'")
                        kwargs[key] = v
            return args, kwargs
        values = params if type(params) is list else ()
        n = len(values)
        if n > self.max_pos:
            raise InvalidParams(f"too many arguments, want at most {self.max_pos}")
        vi = 0
        for p in self.positional:
            if p.is_ctx:
                args.append(ctx)
            elif vi < n:
                v = values[vi]
                vi += 1
                if p.allowed is not None and type(v) not in p.allowed:
                    raise p.mistyped(v, False)
                args.append(v)
            elif p.default is not REQUIRED:
                args.append(p.default)
            else:
                raise p.missing(False)
        if vi < n:
            args.extend(values[vi:])
        for p in self.keyword:
            if p.is_ctx:
                kwargs[p.name] = ctx
            elif p.default is REQUIRED:
                raise p.missing(True)
        return args, kwargs


def _make_invoke(fn: Callable[..., Any], plan: Plan) -> Callable[[Any, Any, int], Any]:
    """The per-request entry: ``invoke(params, transport, cid)`` binds and calls ``fn``.

    The common shape (array or absent params, no Context, no required keyword-only
    parameter) calls ``fn(*params)`` after a length test and the type tests; anything
    else goes through ``Plan.bind``, which also produces every error message."""
    bind = plan.bind
    if not plan.simple:

        def invoke_general(params: Any, transport: Any, cid: int) -> Any:
            args, kwargs = bind(params, transport, cid)
            return fn(*args, **kwargs)

        return invoke_general

    lo, hi, checks = plan.min_pos, plan.max_pos, plan.checks
    no_params_ok = lo == 0

    if not checks:

        def invoke_plain(params: Any, transport: Any, cid: int) -> Any:
            if type(params) is list:
                if lo <= len(params) <= hi:
                    return fn(*params)
            elif params is NO_PARAMS and no_params_ok:
                return fn()
            args, kwargs = bind(params, transport, cid)
            return fn(*args, **kwargs)

        return invoke_plain

    def invoke_checked(params: Any, transport: Any, cid: int) -> Any:
        if type(params) is list:
            n = len(params)
            if lo <= n <= hi:
                for i, allowed in checks:
                    if i < n and type(params[i]) not in allowed:
                        break
                else:
                    return fn(*params)
        elif params is NO_PARAMS and no_params_ok:
            return fn()
        args, kwargs = bind(params, transport, cid)
        return fn(*args, **kwargs)

    return invoke_checked


def is_async_callable(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004
    return call is not None and not inspect.isroutine(fn) and inspect.iscoroutinefunction(call)


# --- methods, topics, services ---------------------------------------------------------


class Method(MethodCore):
    """One exposed method: the callable, its plan, its namespace's bulkhead.

    ``fn``, ``kind``, ``lo``, ``hi``, ``bulkhead`` and ``invoke`` are fields of the
    compiled base (``fastrpc._fastcall.MethodCore``), which the dispatcher's compiled
    fast path reads without attribute lookups."""

    __slots__ = ("name", "is_async", "service", "plan")

    def __init__(self, name: str, fn: Any, service: "Service", kind: int | None = None) -> None:
        self.name = name
        self.fn = fn
        self.service = service
        self.bulkhead = service.bulkhead
        if kind is not None:  # built-in
            self.kind = kind
            self.is_async = False
            self.plan = Plan()
            self.invoke: Callable[[Any, Any, int], Any] = _builtin_invoke
            self.lo, self.hi, self.checks = 1, 0, ()
            return
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise TypeError(f"{name}: generators cannot be RPC handlers (use a topic)")
        self.is_async = is_async_callable(fn)
        self.plan = Plan.of(fn)
        self.invoke = _make_invoke(fn, self.plan)
        # lo..hi: array lengths the dispatcher may pass straight to fn(*params) (no
        # binding) once the type tests in checks pass; an empty range (lo > hi) when
        # it may not.
        if self.plan.simple:
            self.lo, self.hi, self.checks = self.plan.min_pos, self.plan.max_pos, self.plan.checks
        else:
            self.lo, self.hi, self.checks = 1, 0, ()
        self.kind = SYNC
        self.update_kind()

    def update_kind(self) -> None:
        if self.kind in (SYNC, ASYNC, THREADED):
            if self.is_async:
                self.kind = ASYNC
            else:
                self.kind = THREADED if self.bulkhead.threaded else SYNC

    def __repr__(self) -> str:
        return f"<Method {self.name}>"


def _builtin_invoke(params: Any, transport: Any, cid: int) -> Any:
    raise RuntimeError("built-in methods are run by the dispatcher")


class Topic:
    """A subscription topic of one namespace (``registry.topic("eth", "newHeads")``).

    ``params``: optional callable receiving the subscribe call's extra params (after the
    topic name, planned and type-checked like a handler) and returning a hashable *key*.
    Subscribers with equal keys share one channel; ``publish(topic, payload, key=...)``
    reaches that channel. Without it the topic takes no extra params (key None).
    """

    __slots__ = ("namespace", "name", "key_fn", "plan", "invoke", "notify_method")

    def __init__(self, namespace: str, name: str, params: Callable[..., Any] | None = None) -> None:
        self.namespace = namespace
        self.name = name
        self.key_fn = params
        self.plan = Plan.of(params) if params is not None else None
        self.invoke = _make_invoke(params, self.plan) if params is not None else None
        self.notify_method = f"{namespace}_subscription"

    def key(self, extra: list[Any], transport: Any, cid: int) -> Any:
        """The channel key for the params after the topic name (raises InvalidParams)."""
        if self.invoke is None:
            if extra:
                raise InvalidParams(f"topic '{self.name}' takes no parameters")
            return None
        return self.invoke(extra, transport, cid)

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    def __repr__(self) -> str:
        return f"<Topic {self.qualified_name}>"


class Service:
    """A namespace: its methods, its topics and its bulkhead."""

    __slots__ = ("name", "bulkhead", "methods", "topics", "_registry")

    def __init__(self, name: str, registry: "Registry") -> None:
        self.name = name
        self.bulkhead = Bulkhead(name)
        self.methods: dict[str, Method] = {}
        self.topics: dict[str, Topic] = {}
        self._registry = registry

    def configure(self, **settings: Any) -> "Service":
        """Bulkhead settings: ``threaded``, ``timeout``, ``max_concurrency``,
        ``failure_threshold``, ``cooldown``, ``half_open_probes`` (see
        ``fastrpc.isolation``). ``timeout=None`` disables the timeout."""
        self.bulkhead.configure(**settings)
        for m in self.methods.values():
            m.update_kind()
        return self

    def __repr__(self) -> str:
        return f"<Service {self.name}: {len(self.methods)} methods, {len(self.topics)} topics>"


def camel_case(name: str) -> str:
    """``get_balance`` → ``getBalance`` (for ``register(..., rename=camel_case)``)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _public_callables(obj: Any) -> Iterator[tuple[str, Any]]:
    is_module = isinstance(obj, types.ModuleType)
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            static = inspect.getattr_static(obj, name)
        except AttributeError:
            continue
        if is_module:
            if not (inspect.isfunction(static) or inspect.isbuiltin(static)):
                continue
            if getattr(static, "__module__", None) != obj.__name__:
                continue
        elif not isinstance(
            static,
            (types.FunctionType, staticmethod, classmethod, types.BuiltinFunctionType, functools.partial),
        ):
            continue
        yield name, getattr(obj, name)


class Registry:
    """Every method and topic, by namespace; ``table`` is what dispatchers serve.

    ``namespaces``: the allowlist of namespaces served (None: all registered ones).
    """

    def __init__(self, namespaces: Iterable[str] | None = None) -> None:
        self._services: dict[str, Service] = {}
        self._allow: frozenset[str] | None = None if namespaces is None else frozenset(namespaces)
        self._builtin: set[str] = set()  #: built-in namespaces: exposed whatever the allowlist
        #: Exposed methods by full name. Updated in place, so a Dispatcher may hold it.
        self.table: dict[str, Method] = {}

    # --- declaring -------------------------------------------------------------------

    def service(self, namespace: str, **settings: Any) -> Service:
        """The namespace's Service, created if new, with bulkhead ``settings`` applied."""
        svc = self._services.get(namespace)
        if svc is None:
            if namespace and not _NAMESPACE_RE.match(namespace):
                raise ValueError(f"namespace {namespace!r} must be letters and digits, starting with a letter")
            svc = self._services[namespace] = Service(namespace, self)
        if settings:
            svc.configure(**settings)
        return svc

    def add(self, name: str, fn: Callable[..., Any]) -> Method:
        """Expose ``fn`` as method ``name``: ``<namespace>_<name>`` (go-ethereum's
        convention; the namespace is the bulkhead), or a bare name without ``_``, which
        belongs to the default namespace ``""`` (an allowlist exposes it only when it
        lists ``""``)."""
        namespace, sep, short = name.partition("_")
        if not sep:
            namespace, short = "", name
        if not short or (sep and not namespace):
            raise ValueError(f"method name {name!r} must be <namespace>_<name> or a bare name")
        if namespace == RPC_NAMESPACE:
            raise ValueError(f"{name!r}: the {RPC_NAMESPACE!r} namespace is built in (rpc_modules)")
        return self._add(namespace, name, short, fn)

    def _add(self, namespace: str, name: str, short: str, fn: Callable[..., Any]) -> Method:
        svc = self.service(namespace)
        if name in svc.methods:
            raise ValueError(f"method {name!r} is already registered")
        if svc.topics and short in ("subscribe", "unsubscribe"):
            raise ValueError(f"{name!r} is the built-in of {namespace}'s topics")
        m = Method(name, fn, svc)
        svc.methods[name] = m
        self._publish(svc, m)
        return m

    def method(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@registry.method("eth_blockNumber")`` (default: the function's
        own ``__name__``). Returns the function unchanged."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name or fn.__name__, fn)
            return fn

        return decorate

    def register(
        self,
        namespace: str,
        obj: Any,
        *,
        rename: Callable[[str], str] | None = None,
        exclude: Iterable[str] = (),
        **settings: Any,
    ) -> Service:
        """Expose the public methods of ``obj`` as ``<namespace>_<name>``; ``settings``
        configure the namespace's bulkhead (``threaded=True``, ``timeout=...``, ...)."""
        if isinstance(obj, type):
            raise TypeError("register an instance, not a class")
        svc = self.service(namespace, **settings)
        skip = set(exclude)
        found = False
        for attr, fn in _public_callables(obj):
            if attr in skip:
                continue
            self.add(f"{namespace}_{rename(attr) if rename else attr}", fn)
            found = True
        if not found:
            raise ValueError(f"{obj!r} has no public methods to register")
        return svc

    def topic(self, namespace: str, name: str, *, params: Callable[..., Any] | None = None) -> Topic:
        """Declare a subscription topic; clients call ``<namespace>_subscribe`` with
        ``[name, *params]``. The first topic of a namespace adds the built-ins
        ``<namespace>_subscribe`` and ``<namespace>_unsubscribe``."""
        if namespace == RPC_NAMESPACE:
            raise ValueError(f"the {RPC_NAMESPACE!r} namespace is built in (rpc_modules)")
        svc = self.service(namespace)
        if name in svc.topics:
            raise ValueError(f"topic {name!r} of {namespace!r} already declared")
        if not svc.topics:
            for short, kind in (("subscribe", SUBSCRIBE), ("unsubscribe", UNSUBSCRIBE)):
                full = f"{namespace}_{short}"
                if full in svc.methods:
                    raise ValueError(f"{full!r} is registered as a method: it would hide the topic built-in")
            for short, kind in (("subscribe", SUBSCRIBE), ("unsubscribe", UNSUBSCRIBE)):
                full = f"{namespace}_{short}"
                m = Method(full, None, svc, kind=kind)
                svc.methods[full] = m
                self._publish(svc, m)
        topic = svc.topics[name] = Topic(namespace, name, params)
        return topic

    def add_rpc_modules(self) -> Method:
        """Serve ``rpc_modules`` (go-ethereum's namespace listing; see the module docstring).
        The server calls it once; a second call raises ValueError."""
        self._builtin.add(RPC_NAMESPACE)
        return self._add(RPC_NAMESPACE, f"{RPC_NAMESPACE}_modules", "modules", self.modules)

    def modules(self) -> dict[str, str]:
        """``{"<namespace>": "1.0"}`` for every exposed namespace that has a method, sorted
        (the default namespace ``""`` of bare method names is not a module)."""
        names = {m.service.name for m in self.table.values()}
        names.discard("")
        return {name: MODULE_VERSION for name in sorted(names)}

    # --- exposing --------------------------------------------------------------------

    def expose(self, namespaces: Iterable[str] | None) -> None:
        """Set the allowlist (None: every namespace) and rebuild ``table`` in place."""
        self._allow = None if namespaces is None else frozenset(namespaces)
        table: dict[str, Method] = {}
        for svc in self._services.values():
            if self._allow is None or svc.name in self._allow or svc.name in self._builtin:
                table.update(svc.methods)
        self.table.clear()
        self.table.update(table)

    def _publish(self, svc: Service, m: Method) -> None:
        if self._allow is None or svc.name in self._allow or svc.name in self._builtin:
            self.table[m.name] = m

    @property
    def namespaces(self) -> frozenset[str] | None:
        """The allowlist (None: all)."""
        return self._allow

    # --- looking up ------------------------------------------------------------------

    def lookup(self, name: str) -> Method | None:
        """The exposed method called ``name``."""
        return self.table.get(name)

    def get_service(self, namespace: str) -> Service | None:
        return self._services.get(namespace)

    def services(self) -> list[Service]:
        return list(self._services.values())

    def find_topic(self, name: str) -> Topic:
        """A topic by ``"<namespace>.<name>"``, or by bare name when only one namespace has it."""
        namespace, sep, short = name.rpartition(".")
        if sep:
            svc = self._services.get(namespace)
            topic = svc.topics.get(short) if svc else None
            if topic is None:
                raise KeyError(f"no topic {name!r}")
            return topic
        found = [s.topics[name] for s in self._services.values() if name in s.topics]
        if len(found) == 1:
            return found[0]
        if not found:
            raise KeyError(f"no topic {name!r}")
        raise KeyError(f"topic {name!r} exists in several namespaces: say '<namespace>.{name}'")

    def __contains__(self, name: object) -> bool:
        return name in self.table

    def __len__(self) -> int:
        return len(self.table)

    def close(self) -> None:
        """Stop every threaded namespace's pool (running calls finish in their threads)."""
        for svc in self._services.values():
            svc.bulkhead.shutdown()


__all__ = [
    "ASYNC",
    "MODULE_VERSION",
    "REQUIRED",
    "ROUTE",
    "RPC_NAMESPACE",
    "SUBSCRIBE",
    "SYNC",
    "THREADED",
    "UNSUBSCRIBE",
    "Context",
    "Method",
    "Param",
    "Plan",
    "Registry",
    "Service",
    "Topic",
    "camel_case",
    "json_type",
    "type_check",
]
