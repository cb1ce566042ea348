"""The article's FastAPI + OpenTelemetry bottleneck demo, with loopwatch added.

Run ``uvicorn example.app:app --port 8000`` with ``DEMO_MODE`` set to ``bottlenecks``
(default), ``optimized`` or ``process``.
"""
