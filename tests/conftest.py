"""Shared test setup.

``tests/`` is put on ``sys.path`` so every suite can ``import reference_codec`` (the
pure-Python RFC 6455 codec the compiled core is checked against).

No autouse leak fixture here: each unit test that makes a ``BufferPool`` asserts
``pool.bytes_in_use == 0`` itself where the contract says every block is returned.
"""
from __future__ import annotations

import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
