"""fastrpc from a real browser (issue 12, section 5): headless Chromium, driven by Selenium,
loads ``page.html`` over http from 127.0.0.1 and talks JSON-RPC to a fastrpc node through
the browser's own WebSocket API. Every reply the page saw is compared whole.

A page's script cannot see why an upgrade failed (the WebSocket API reports only a 1006
close), so a refusal is proven from both ends: the node's ``refused_origin`` counter, and
Chromium's own console line with the status it received."""
from __future__ import annotations

from browser_rig import REFUSED, Browser, PageServer, RpcNode, wait_until

N = 5  # notifications published to the page's subscription


def ws_url(node: RpcNode) -> str:
    return f"ws://127.0.0.1:{node.port}/"


def test_calls_batch_and_subscription(browser, page, node):
    n = node()
    full_session(browser, page, n, ws_url(n))


def full_session(browser: Browser, page: PageServer, n: RpcNode, url: str) -> None:
    """The page's "full" run against node ``n`` at ``url``, checked end to end (both sides)."""
    browser.open(page.url(url, "full", n=N))
    st = browser.wait("subscribed", lambda s: s["phase"] == "subscribed")
    sub = st["replies"]["subscribe"]
    sub_id = sub["result"]
    assert sub == {"jsonrpc": "2.0", "id": 11, "result": sub_id}
    assert isinstance(sub_id, str) and sub_id.startswith("0x")
    assert n.subscribers() == 1
    heads = [{"number": hex(1000 + i), "hash": "0x" + f"{i:02x}" * 32} for i in range(N)]
    for head in heads:
        assert n.publish(head) == 1

    st = browser.wait("unsubscribed", lambda s: s["phase"] == "unsubscribed")
    assert st["replies"]["unsubscribe"] == {"jsonrpc": "2.0", "id": 12, "result": True}
    assert n.subscribers() == 0
    assert n.publish({"number": "0xdead"}) == 0  # nobody left to write to
    browser.driver.execute_script("window.proceed()")

    st = browser.wait("done", lambda s: s["done"])
    assert st["phase"] == "done" and st["opened"] is True
    assert st["extensions"] == "" and st["protocol"] == ""  # permessage-deflate declined
    r = st["replies"]
    assert r["positional"] == {"jsonrpc": "2.0", "id": 1, "result": 42}
    assert r["named"] == {"jsonrpc": "2.0", "id": 2, "result": 42}
    assert r["echo"] == {"jsonrpc": "2.0", "id": 3, "result": {
        "text": "\u017c\u00f3\u0142w \u2713", "list": [1, 2.5, None, True], "nested": {"a": []}}}
    assert r["appError"] == {"jsonrpc": "2.0", "id": 4, "error": {
        "code": REFUSED, "message": "refused", "data": {"why": "not today"}}}
    assert r["invalidParams"] == {"jsonrpc": "2.0", "id": 5, "error": {
        "code": -32602, "message": "invalid argument 0 (a): want integer, got string"}}
    assert r["notFound"] == {"jsonrpc": "2.0", "id": 6, "error": {"code": -32601, "message": "Method not found"}}
    # One array in request order, the notification left out.
    assert r["batch"] == [
        {"jsonrpc": "2.0", "id": 7, "result": 3},
        {"jsonrpc": "2.0", "id": 8, "error": {"code": -32601, "message": "Method not found"}},
        {"jsonrpc": "2.0", "id": 9, "result": "named"},
    ]
    assert st["big"] == {"sent": 320_000, "received": 320_000, "same": True}
    # Every notification, in publish order, under the subscription's id; none after the
    # unsubscribe (the one published then would have arrived before the "after" reply).
    assert st["notifications"] == [
        {"jsonrpc": "2.0", "method": "chain_subscription", "params": {"subscription": sub_id, "result": head}}
        for head in heads
    ]
    assert r["after"] == {"jsonrpc": "2.0", "id": 13, "result": "after"}
    assert st["unexpected"] == []
    # The close event carries the server's answering close frame: the code echoed, no reason.
    assert st["close"] == {"code": 1000, "reason": "", "wasClean": True}

    m = wait_until(n.metrics, lambda m: m["connections"] == 0, "the page's connection to close")
    assert m["upgraded"] == 1 and m["refused_http"] == 0 and m["refused_origin"] == 0
    assert m["closed_peer"] == 1  # the page's close frame, answered
    # 10 calls and one batch in; their 11 replies and the N notifications out.
    assert m["messages_in"] == 11 and m["messages_out"] == 11 + N


def test_origin_not_allowed_403(browser, page, node):
    other = f"http://127.0.0.1:{page.port + 1 if page.port < 65535 else page.port - 1}"
    n = node(origins=[other])
    browser.open(page.url(ws_url(n), "probe"))
    st = browser.wait("done", lambda s: s["done"])
    assert st["phase"] == "refused" and st["opened"] is False and st["errorEvent"] is True
    assert st["close"] == {"code": 1006, "wasClean": False}  # all a script may learn
    # What Chromium itself saw: the status line of the server's answer.
    lines = [m for m in browser.console() if ws_url(n) in m]
    assert len(lines) == 1 and "Unexpected response code: 403" in lines[0], lines
    m = n.metrics()
    assert m["refused_origin"] == 1 and m["refused_http"] == 1
    assert m["upgraded"] == 0 and m["connections"] == 0


def test_allowed_origin_passes(browser, page, node):
    n = node(origins=["http://127.0.0.1:1", page.origin])
    browser.open(page.url(ws_url(n), "probe"))
    st = browser.wait("done", lambda s: s["done"])
    assert st["phase"] == "done" and st["opened"] is True
    # The Origin Chromium sent with the upgrade, as the node's handler read it.
    assert st["replies"]["origin"] == {"jsonrpc": "2.0", "id": 1, "result": page.origin}
    assert st["close"] == {"code": 1000, "reason": "", "wasClean": True}
    assert [m for m in browser.console() if "WebSocket" in m] == []
    m = wait_until(n.metrics, lambda m: m["connections"] == 0, "the page's connection to close")
    assert m["upgraded"] == 1 and m["refused_origin"] == 0 and m["refused_http"] == 0
