"""Small ASGI apps served by the middleware tests."""
