"""loopwatch benchmarks: overhead under load, task-switch microbenchmarks, accuracy, memory.

Run everything with ``python -m bench`` (``--quick`` for a short run); results go to
``docs/benchmarks.md`` and ``docs/benchmarks*.png``.
"""
