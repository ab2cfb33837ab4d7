"""Fuzz target: the compiled JSON-RPC fast paths against the general Python paths.

Input: ``mode, messages...`` with messages separated by ``\\n`` (at most 8).

mode bit 0 clear: the server. ``FastCall.on_message`` (the compiled entry and its
  canonical-layout scan) and ``Dispatcher.on_message_py`` each get every message, in
  order, on dispatchers with the same services and fresh state; the reply bytes must be
  identical, and so must the circuit breakers' state afterwards (a failing method opens
  one: the order of messages matters). The services are ``tests/unit/test_fastcall.py``'s.
mode bit 0 set: the client. Each message is a reply for a client with calls pending;
  ``_clientcall``'s reply recognition followed (when it declines) by the general path
  must settle the same futures with the same values or errors, and leave the same
  counters and pending calls, as the general path alone (``tests/unit/test_clientcall.py``'s
  ``both_paths``).
"""
from __future__ import annotations

from fuzzing import instrumented, main

with instrumented():
    import fastrpc  # noqa: F401 - instrumented before the unit tests import it

from test_clientcall import both_paths
from test_fastcall import pair

BREAKER_METHODS = ("t_boom", "t_zero")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, messages = data[0], data[1:].split(b"\n")[:8]
    if mode & 1:
        for msg in messages:
            _, general, fast = both_paths(msg)
            assert general == fast, msg
        return
    a, b = pair()
    for msg in messages:
        assert a.on_message(7, msg) == b.on_message_py(7, msg), msg
    for name in BREAKER_METHODS:
        ba, bb = a.registry.lookup(name).bulkhead, b.registry.lookup(name).bulkhead
        assert (ba.state, ba.failure_count) == (bb.state, bb.failure_count), name


if __name__ == "__main__":
    main(test_one_input)
