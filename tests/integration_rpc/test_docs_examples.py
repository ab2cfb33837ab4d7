"""The server examples the docs show, run as written: the README's "Use" example and the
``fastrpc.server`` module docstring.

The README's example is taken from README.md itself: its top-level statements (the
server, its methods, namespaces and topic) run unchanged; only ``main()`` is replaced,
because it listens on a fixed port for an hour. The README's own ``server.publish(...)``
call is then evaluated, with ``n`` bound, against a subscriber.
"""
from __future__ import annotations

import ast
import os
import re
from typing import Any

from rpcclient import RpcClient

import fastrpc.server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_server_example() -> ast.Module:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    (code,) = [b for b in blocks if "server.publish(" in b]
    return ast.parse(code)


def publish_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "publish"
    ]


def is_main(stmt: ast.stmt) -> bool:
    """``async def main()`` or ``asyncio.run(main())``."""
    if isinstance(stmt, ast.AsyncFunctionDef):
        return stmt.name == "main"
    return isinstance(stmt, ast.Expr) and "asyncio.run(" in ast.unparse(stmt)


def test_readme_server_example_publishes_to_a_subscriber(run, rpc_server):
    async def body():
        tree = readme_server_example()
        (call,) = publish_calls(tree)
        setup = ast.Module([s for s in tree.body if not is_main(s)], type_ignores=[])
        ns: dict[str, Any] = {"__name__": "readme_example"}
        exec(compile(setup, "README.md", "exec"), ns)
        srv = await rpc_server(ns["server"])
        async with await RpcClient.open(srv.port) as c:
            sub_id = await c.call("chain_subscribe", ["newHeads"])
            ns["n"] = 7
            assert eval(compile(ast.Expression(call), "README.md", "eval"), ns) == 1
            (note,) = await c.wait_notifications(1)
            assert note == {
                "jsonrpc": "2.0",
                "method": "chain_subscription",
                "params": {"subscription": sub_id, "result": {"number": "0x7"}},
            }
            assert await c.call("eth_blockNumber") == "0x10d4f"  # the rest of the example serves too

    run(body())


def test_server_docstring_publish_spelling_resolves():
    """``fastrpc.server``'s docstring declares ``server.topic(ns, name)`` and publishes by a
    string: that string must name the declared topic."""
    doc = fastrpc.server.__doc__
    (topic_args,) = re.findall(r'server\.topic\(("[^"]*", "[^"]*")\)', doc)
    (spelling,) = re.findall(r'server\.publish\(("[^"]*"),', doc)
    srv = fastrpc.server.Server()
    topic = srv.topic(*ast.literal_eval(f"({topic_args})"))
    assert srv.registry.find_topic(ast.literal_eval(spelling)) is topic
    assert srv.publish(ast.literal_eval(spelling), {"number": "0x1"}) == 0  # no subscriber yet
