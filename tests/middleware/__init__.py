"""Tests of LoopWatchMiddleware behind real uvicorn servers."""
