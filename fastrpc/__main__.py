"""``python -m fastrpc``: the ``fastrpc`` command (see fastrpc.cli)."""
import sys

from .cli import main

sys.exit(main())
