"""The ASGI entry point: ``uvicorn example.app:app``; the mode comes from ``$DEMO_MODE``."""

from example.factory import create_app

app = create_app()

__all__ = ["app", "create_app"]
