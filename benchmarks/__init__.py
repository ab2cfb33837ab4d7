"""fastrpc's benchmarks. Each ``benchmarks/<name>.py`` is a script (``python
benchmarks/load.py ...``; they import their siblings as top-level modules); the package
exists for ``python -m benchmarks.report``, the one command that runs them all and
writes ``docs/report.md``. Not collected by the test run (``pytest`` collects ``tests/``)."""
