"""fastrpc.service: registration, namespaces, parameter plans, Context."""
from __future__ import annotations

import functools
import inspect
import sys
import types
from typing import Any, Optional, Union

import pytest

from fastrpc.errors import InvalidParams
from fastrpc.jsonrpc import NO_PARAMS
from fastrpc.service import (
    ASYNC,
    SUBSCRIBE,
    SYNC,
    THREADED,
    UNSUBSCRIBE,
    Context,
    Plan,
    Registry,
    camel_case,
    type_check,
)
from fakes import FakeTransport


def call(fn, params=NO_PARAMS, transport=None, cid=1):
    """Bind and call through the registered method's per-request entry."""
    reg = Registry()
    m = reg.add("t_f", fn)
    return m.invoke(params, transport or FakeTransport(), cid)


def bad(fn, params):
    with pytest.raises(InvalidParams) as info:
        call(fn, params)
    assert info.value.code == -32602
    return info.value.message


class TestRegistration:
    def test_method_decorator_returns_the_function(self):
        reg = Registry()

        @reg.method("eth_blockNumber")
        def block_number():
            return "0x1"

        assert block_number() == "0x1"
        assert reg.lookup("eth_blockNumber").fn is block_number
        assert "eth_blockNumber" in reg and len(reg) == 1

    def test_method_decorator_default_name(self):
        reg = Registry()

        @reg.method()
        def net_version():
            return "1"

        assert reg.lookup("net_version") is not None

    def test_register_object_exposes_public_methods(self):
        class Eth:
            x = 5  # data: not exposed

            def blockNumber(self):
                return 1

            async def getBlock(self, n):
                return n

            @staticmethod
            def chainId():
                return 2

            @property
            def prop(self):  # a property is never called at registration
                raise AssertionError

            def _private(self):
                pass

        reg = Registry()
        svc = reg.register("eth", Eth())
        assert sorted(svc.methods) == ["eth_blockNumber", "eth_chainId", "eth_getBlock"]
        assert reg.lookup("eth_getBlock").kind == ASYNC
        assert reg.lookup("eth_blockNumber").kind == SYNC

    def test_register_rename_and_exclude(self):
        class Eth:
            def get_balance(self):
                pass

            def shutdown(self):
                pass

        reg = Registry()
        reg.register("eth", Eth(), rename=camel_case, exclude=["shutdown"])
        assert list(reg.table) == ["eth_getBalance"]

    def test_register_module_only_its_own_functions(self):
        mod = types.ModuleType("nodeapi")
        exec("from os.path import join\ndef version():\n    return 1\nVALUE = 3\n", mod.__dict__)
        reg = Registry()
        reg.register("net", mod)
        assert list(reg.table) == ["net_version"]

    def test_register_class_refused(self):
        class Eth:
            def a(self):
                pass

        with pytest.raises(TypeError):
            Registry().register("eth", Eth)

    def test_register_nothing_refused(self):
        with pytest.raises(ValueError):
            Registry().register("eth", object())

    def test_duplicate_name_refused(self):
        reg = Registry()
        reg.add("eth_a", lambda: 1)
        with pytest.raises(ValueError):
            reg.add("eth_a", lambda: 2)

    @pytest.mark.parametrize("name", ["eth_", "_x", "1eth_x", "e-th_x"])
    def test_bad_method_names(self, name):
        with pytest.raises(ValueError):
            Registry().add(name, lambda: 1)

    def test_bare_names_live_in_the_default_namespace(self):
        reg = Registry()
        reg.add("echo", lambda x: x)
        assert "echo" in reg
        restricted = Registry(namespaces=["eth"])
        restricted.add("echo", lambda x: x)
        assert "echo" not in restricted  # an allowlist exposes bare names only if it lists ""
        open_default = Registry(namespaces=["eth", ""])
        open_default.add("echo", lambda x: x)
        assert "echo" in open_default

    def test_generators_refused(self):
        def gen():
            yield 1

        async def agen():
            yield 1

        for fn in (gen, agen):
            with pytest.raises(TypeError):
                Registry().add("t_g", fn)

    def test_async_detection(self):
        class AsyncCallable:
            async def __call__(self):
                return 1

        async def coro(a):
            return a

        reg = Registry()
        assert reg.add("t_a", coro).kind == ASYNC
        assert reg.add("t_b", functools.partial(coro, 1)).kind == ASYNC
        assert reg.add("t_c", AsyncCallable()).kind == ASYNC
        assert reg.add("t_d", lambda: None).kind == SYNC

    def test_threaded_namespace(self):
        reg = Registry()
        reg.service("db", threaded=True)
        assert reg.add("db_get", lambda: 1).kind == THREADED

        async def a():
            pass

        assert reg.add("db_async", a).kind == ASYNC  # async handlers stay on the loop
        reg.service("db", threaded=False)
        assert reg.lookup("db_get").kind == SYNC

    def test_register_settings_configure_the_bulkhead(self):
        class Db:
            def get(self):
                pass

        reg = Registry()
        svc = reg.register("db", Db(), threaded=True, timeout=2.5, max_concurrency=3)
        assert svc.bulkhead.threaded and svc.bulkhead.timeout == 2.5 and svc.bulkhead.max_concurrency == 3
        assert reg.lookup("db_get").kind == THREADED

    def test_allowlist(self):
        reg = Registry(namespaces=["eth"])
        reg.add("eth_a", lambda: 1)
        reg.add("admin_b", lambda: 2)
        assert "eth_a" in reg and "admin_b" not in reg
        table = reg.table
        reg.expose(["admin"])
        assert reg.table is table  # rebuilt in place: dispatchers keep the same dict
        assert list(table) == ["admin_b"]
        reg.expose(None)
        assert sorted(table) == ["admin_b", "eth_a"]
        assert reg.namespaces is None

    def test_topic_adds_builtins(self):
        reg = Registry()
        t = reg.topic("eth", "newHeads")
        assert reg.lookup("eth_subscribe").kind == SUBSCRIBE
        assert reg.lookup("eth_unsubscribe").kind == UNSUBSCRIBE
        assert t.notify_method == "eth_subscription"
        reg.topic("eth", "logs")  # second topic: builtins already there
        with pytest.raises(ValueError):
            reg.topic("eth", "logs")
        with pytest.raises(ValueError):
            reg.add("eth_subscribe", lambda: 1)

    def test_topic_conflicts_with_method(self):
        reg = Registry()
        reg.add("eth_subscribe", lambda: 1)
        with pytest.raises(ValueError):
            reg.topic("eth", "newHeads")

    def test_find_topic(self):
        reg = Registry()
        a = reg.topic("eth", "newHeads")
        b = reg.topic("eth", "logs")
        c = reg.topic("bor", "logs")
        assert reg.find_topic("newHeads") is a
        assert reg.find_topic("eth.logs") is b and reg.find_topic("bor.logs") is c
        with pytest.raises(KeyError):
            reg.find_topic("logs")
        with pytest.raises(KeyError):
            reg.find_topic("nope")

    def test_camel_case(self):
        assert camel_case("get_balance") == "getBalance"
        assert camel_case("version") == "version"
        assert camel_case("get_block_by_number") == "getBlockByNumber"


class TestRpcModules:
    """go-ethereum's ``rpc_modules`` (``rpc/server.go`` ``RPCService.Modules``)."""

    def registry(self, namespaces=None) -> Registry:
        reg = Registry(namespaces)
        reg.add("eth_blockNumber", lambda: "0x1")
        reg.add("net_version", lambda: "1")
        reg.add("echo", lambda v: v)  # the default namespace "" is no module
        reg.service("debug", timeout=1.0)  # configured, no method: not listed
        reg.topic("chain", "newHeads")  # a topics-only namespace has its built-ins
        reg.add_rpc_modules()
        return reg

    def test_lists_exposed_namespaces(self):
        reg = self.registry()
        assert reg.modules() == {"chain": "1.0", "eth": "1.0", "net": "1.0", "rpc": "1.0"}
        assert list(reg.modules()) == sorted(reg.modules())
        assert reg.table["rpc_modules"].fn() == reg.modules()
        assert reg.table["rpc_modules"].kind == SYNC  # served by the compiled common call

    def test_allowlist_respected_rpc_always_exposed(self):
        reg = self.registry(["eth"])
        assert reg.modules() == {"eth": "1.0", "rpc": "1.0"}
        assert "rpc_modules" in reg and "net_version" not in reg
        reg.expose(["net", "chain"])
        assert reg.modules() == {"chain": "1.0", "net": "1.0", "rpc": "1.0"}
        reg.expose([])
        assert list(reg.table) == ["rpc_modules"]

    def test_later_registrations_seen(self):
        reg = self.registry()
        reg.add("txpool_status", lambda: {})
        assert "txpool" in reg.modules()

    @pytest.mark.parametrize("name", ["rpc_modules", "rpc_other"])
    def test_rpc_namespace_reserved(self, name):
        reg = Registry()
        with pytest.raises(ValueError, match="built in"):
            reg.add(name, lambda: None)
        with pytest.raises(ValueError, match="built in"):
            reg.topic("rpc", "x")

    def test_added_once(self):
        reg = Registry()
        reg.add_rpc_modules()
        with pytest.raises(ValueError, match="already registered"):
            reg.add_rpc_modules()

    def test_not_added_by_default(self):
        assert "rpc_modules" not in Registry()


class TestTypeCheck:
    @pytest.mark.parametrize(
        "annotation, accepted, want",
        [
            (int, {int}, "integer"),
            (float, {int, float}, "number"),
            (str, {str}, "string"),
            (bool, {bool}, "boolean"),
            (list, {list}, "array"),
            (dict, {dict}, "object"),
            (list[int], {list}, "array"),
            (dict[str, int], {dict}, "object"),
            (Optional[int], {int, type(None)}, "integer or null"),
            (Union[int, str], {int, str}, "integer or string"),
        ],
    )
    def test_simple(self, annotation, accepted, want):
        assert type_check(annotation) == (frozenset(accepted), want)

    @pytest.mark.skipif(sys.version_info < (3, 10), reason="X | Y syntax")
    def test_pipe_union(self):
        assert type_check(int | None) == (frozenset({int, type(None)}), "integer or null")

    @pytest.mark.parametrize("annotation", [Any, tuple, object, Optional[Any], Union[int, tuple], "Nope"])
    def test_unchecked(self, annotation):
        assert type_check(annotation) is None


class TestPositionalParams:
    def test_exact(self):
        assert call(lambda a, b: [a, b], [1, 2]) == [1, 2]

    def test_defaults(self):
        def f(a, b=10, c=20):
            return [a, b, c]

        assert call(f, [1]) == [1, 10, 20]
        assert call(f, [1, 2]) == [1, 2, 20]

    def test_absent_params_means_no_arguments(self):
        assert call(lambda: 5) == 5
        assert call(lambda: 5, []) == 5
        assert call(lambda: 5, {}) == 5

    def test_missing(self):
        assert bad(lambda a, b: 0, [1]) == "missing value for required argument 1 (b)"
        assert bad(lambda a: 0, NO_PARAMS) == "missing value for required argument 0 (a)"

    def test_too_many(self):
        assert bad(lambda a, b=1: 0, [1, 2, 3]) == "too many arguments, want at most 2"
        assert bad(lambda: 0, [1]) == "too many arguments, want at most 0"

    def test_varargs(self):
        def f(a, *rest):
            return [a, list(rest)]

        assert call(f, [1, 2, 3]) == [1, [2, 3]]

    def test_types_checked(self):
        def f(n: int, s: str, x: float, flag: bool, items: list, obj: dict):
            return "ok"

        assert call(f, [1, "s", 2, True, [], {}]) == "ok"
        assert bad(f, ["1", "s", 2, True, [], {}]) == "invalid argument 0 (n): want integer, got string"
        assert bad(f, [True, "s", 2, True, [], {}]) == "invalid argument 0 (n): want integer, got boolean"
        assert bad(f, [1.0, "s", 2, True, [], {}]) == "invalid argument 0 (n): want integer, got number"
        assert bad(f, [1, "s", "2", True, [], {}]) == "invalid argument 2 (x): want number, got string"
        assert bad(f, [1, "s", 2, 1, [], {}]) == "invalid argument 3 (flag): want boolean, got integer"
        assert bad(f, [1, "s", 2, True, {}, {}]) == "invalid argument 4 (items): want array, got object"
        assert bad(f, [1, "s", 2, True, [], None]) == "invalid argument 5 (obj): want object, got null"

    def test_optional(self):
        def f(a: Optional[int] = None):
            return a

        assert call(f, [None]) is None
        assert call(f, [3]) == 3
        assert call(f, []) is None
        assert bad(f, ["x"]) == "invalid argument 0 (a): want integer or null, got string"

    def test_unannotated_and_any_unchecked(self):
        def f(a, b: Any):
            return [a, b]

        assert call(f, [{"x": 1}, [2]]) == [{"x": 1}, [2]]

    def test_keyword_only_with_default_keeps_it(self):
        def f(a, *, b=7):
            return [a, b]

        assert call(f, [1]) == [1, 7]

    def test_keyword_only_required_cannot_come_from_an_array(self):
        def f(a, *, b):
            return [a, b]

        assert bad(f, [1]) == "missing value for required argument 'b'"


class TestNamedParams:
    def test_by_name(self):
        def f(a, b=2):
            return [a, b]

        assert call(f, {"a": 1}) == [1, 2]
        assert call(f, {"b": 3, "a": 1}) == [1, 3]

    def test_missing(self):
        assert bad(lambda a, b: 0, {"a": 1}) == "missing value for required argument 'b'"

    def test_unexpected(self):
        assert bad(lambda a: 0, {"a": 1, "zz": 2}) == "unexpected argument 'zz'"

    def test_unexpected_long_name_is_shortened(self):
        message = bad(lambda: 0, {"x" * 500: 1})
        assert len(message) < 100

    def test_mistyped(self):
        def f(a: int):
            return a

        assert bad(f, {"a": "1"}) == "invalid argument 'a': want integer, got string"

    def test_keyword_only(self):
        def f(a, *, b: str, c=3):
            return [a, b, c]

        assert call(f, {"a": 1, "b": "x"}) == [1, "x", 3]
        assert bad(f, {"a": 1, "b": 2}) == "invalid argument 'b': want string, got integer"

    def test_positional_only_by_name(self):
        def f(a, /, b):
            return [a, b]

        assert call(f, {"a": 1, "b": 2}) == [1, 2]

    def test_varkw(self):
        def f(a, **rest):
            return [a, rest]

        assert call(f, {"a": 1, "x": 2}) == [1, {"x": 2}]


class TestContext:
    def test_context_first(self):
        def f(ctx: Context, a: int):
            return [type(ctx).__name__, ctx.cid, a]

        assert call(f, [5], cid=9) == ["Context", 9, 5]
        assert call(f, {"a": 5}, cid=9) == ["Context", 9, 5]

    def test_context_is_not_an_rpc_parameter(self):
        def f(ctx: Context):
            return 1

        assert bad(f, [1]) == "too many arguments, want at most 0"
        assert bad(f, {"ctx": 1}) == "unexpected argument 'ctx'"

    def test_context_in_the_middle_with_defaults_before(self):
        def f(a=1, ctx: Context = None, b=2):
            return [a, ctx.cid, b]

        assert call(f, [], cid=3) == [1, 3, 2]
        assert call(f, [10, 20], cid=3) == [10, 3, 20]

    def test_context_keyword_only(self):
        def f(a, *, ctx: Context):
            return [a, ctx.cid]

        assert call(f, [1], cid=4) == [1, 4]

    def test_context_with_varkw_reserved_name(self):
        def f(ctx: Context, **kw):
            return kw

        assert bad(f, {"ctx": 1}) == "unexpected argument 'ctx'"

    def test_context_string_annotation(self):
        ns: dict[str, Any] = {}
        exec("from __future__ import annotations\ndef f(ctx: Context, a: int):\n    return [ctx.cid, a]\n", ns)
        assert call(ns["f"], [1], cid=2) == [2, 1]  # "Context" unresolvable in ns: matched by name

    def test_peer_and_headers_lazy_and_cached(self):
        t = FakeTransport()
        t.header_lists[1] = [("Origin", "x"), ("X-Api-Key", "k")]

        def f(ctx: Context):
            assert t.peer_calls == 0 and t.header_calls == 0
            return [list(ctx.peer), ctx.peer == ctx.peer, ctx.header("x-api-key"), ctx.header("nope")]

        assert call(f, [], transport=t, cid=1) == [["127.0.0.1", 40001], True, "k", None]
        assert t.peer_calls == 1 and t.header_calls == 1

    def test_no_context_object_without_the_parameter(self, monkeypatch):
        made = []
        monkeypatch.setattr(Context, "__init__", lambda *a: made.append(a))  # would break if called
        assert call(lambda a: a, [1]) == 1
        assert made == []

    def test_two_contexts_refused(self):
        def f(a: Context, b: Context):
            pass

        with pytest.raises(TypeError):
            Registry().add("t_f", f)


class TestPlanIsBuiltOnce:
    def test_no_inspection_per_request(self, monkeypatch):
        reg = Registry()

        def f(a: int, b: str = "x", ctx: Context = None):
            return [a, b]

        m = reg.add("t_f", f)

        def boom(*a, **k):
            raise AssertionError("inspect called per request")

        monkeypatch.setattr(inspect, "signature", boom)
        monkeypatch.setattr(inspect, "getfullargspec", boom)
        t = FakeTransport()
        assert m.invoke([1], t, 1) == [1, "x"]
        assert m.invoke({"a": 2, "b": "y"}, t, 1) == [2, "y"]
        with pytest.raises(InvalidParams):
            m.invoke(["1"], t, 1)

    def test_string_annotations_resolved(self):
        ns: dict[str, Any] = {}
        exec(
            "from __future__ import annotations\nfrom typing import Optional\n"
            "def f(a: int, b: Optional[str] = None):\n    return [a, b]\n",
            ns,
        )
        plan = Plan.of(ns["f"])
        assert plan.names["a"].want == "integer" and plan.names["b"].want == "string or null"

    def test_unresolvable_annotation_is_unchecked(self):
        ns: dict[str, Any] = {}
        exec("from __future__ import annotations\ndef f(a: Missing, b: int):\n    return [a, b]\n", ns)
        assert call(ns["f"], ["anything", 1]) == ["anything", 1]
        assert bad(ns["f"], ["anything", "1"]) == "invalid argument 1 (b): want integer, got string"

    def test_uninspectable_refused(self):
        with pytest.raises(TypeError):
            Registry().add("t_f", max)  # a builtin without a signature
