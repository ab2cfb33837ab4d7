"""Guard: the suite tests the compiled core, never a Python stand-in that slipped in."""
from __future__ import annotations

import importlib.machinery
import inspect
import types

import pytest

import fastrpc
from fastrpc import _core


def test_core_is_an_extension_module():
    assert _core.__file__ is not None
    assert _core.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), _core.__file__
    assert isinstance(_core.__loader__, importlib.machinery.ExtensionFileLoader)
    assert fastrpc._core is _core


def test_core_classes_are_not_python_classes():
    for cls in (_core.FrameParser, _core.BufferPool, _core.ConnTable):
        assert isinstance(cls, type)
        assert cls.__module__ == "fastrpc._core"
        # An extension type keeps its state in a C struct: instances have no __dict__,
        # and none of its methods is a function compiled from Python source.
        assert cls.__dictoffset__ == 0, cls
        assert not any(inspect.isfunction(v) for v in vars(cls).values()), cls
    assert not hasattr(_core.FrameParser(_core.BufferPool()), "__dict__")
    assert not hasattr(_core.BufferPool(), "__dict__")
    assert not hasattr(_core.ConnTable(1), "__dict__")


def test_core_functions_are_compiled():
    for fn in (_core.encode_frame, _core.apply_mask, _core.validate_utf8, _core.parse_close,
               _core.encode_close, _core.is_valid_close_code, _core.monotonic_ms):
        assert not isinstance(fn, types.FunctionType), fn


def test_documented_names_exist():
    names = [
        "OP_CONTINUATION", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
        "DEFAULT_SIZE_CLASSES", "DEFAULT_POOL_LIMIT", "DEFAULT_ARENA_SIZE", "DEFAULT_MAX_MESSAGE_SIZE",
        "DEFAULT_MAX_FRAGMENTS", "MAX_CLASSES", "SLOT_SIZE", "FRAME_STATE_SIZE",
        "BufferPool", "FrameParser", "ConnTable",
        "encode_frame", "encode_close", "encode_ping", "encode_pong", "apply_mask", "validate_utf8",
        "is_valid_close_code", "parse_close", "monotonic_ms",
    ]
    missing = [n for n in names if not hasattr(_core, n)]
    assert missing == []


def test_per_connection_state_sizes():
    assert isinstance(_core.FRAME_STATE_SIZE, int) and isinstance(_core.SLOT_SIZE, int)
    assert 0 < _core.FRAME_STATE_SIZE < _core.SLOT_SIZE


def test_errors_are_the_public_classes():
    from fastrpc import errors

    pool = _core.BufferPool((16,), limit=16, arena_size=16)
    h = pool.acquire(1)
    with pytest.raises(errors.PoolExhausted):
        pool.acquire(1)
    pool.release(h)
    with pytest.raises(errors.InvalidBlock):
        pool.release(h)
    parser = _core.FrameParser(_core.BufferPool())
    with pytest.raises(errors.ProtocolError) as err:
        parser.feed(b"\x81\x00")  # an unmasked frame to a server
    assert err.value.code == errors.CLOSE_PROTOCOL_ERROR
    table = _core.ConnTable(1, max_per_ip=1)
    table.add(1, "10.0.0.1", now=0)
    with pytest.raises(errors.TableFull):
        table.add(2, "10.0.0.2", now=0)
    assert pool.bytes_in_use == 0
