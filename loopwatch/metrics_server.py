"""Serve the Prometheus exposition from a thread, so a scrape works while the loop is stuck.

``app.mount("/metrics", make_asgi_app())`` answers on the event loop: it cannot answer
while the loop is blocked, and a large registry makes the scrape itself a stall. This
server runs in its own thread (``prometheus_client.start_http_server``) and reads
loopwatch's gauges from the watchdog's state.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("loopwatch")

PORT_VARIABLE = "LOOPWATCH_METRICS_PORT"
ADDR_VARIABLE = "LOOPWATCH_METRICS_ADDR"

_servers: dict[tuple[str, int], Any] = {}
_lock = threading.Lock()


def parse_ports(raw: str | int, source: str = "metrics_port") -> range:
    """``9464`` or a range ``9464-9471`` (one port per worker process) as a range."""
    text = str(raw).strip()
    low_text, _, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if high_text else low
    except ValueError:
        raise ValueError(
            f"{source}={raw!r} is not a port; use a number like 9464 or a range like 9464-9471"
        ) from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{source}={raw!r} is out of range; accepted: 1 to 65535, low-high")
    return range(low, high + 1)


def start_metrics_server(
    port: int | str | range = 9464, addr: str = "127.0.0.1", registry: Any = None
) -> int:
    """Serve ``registry`` (default: prometheus_client's) on ``addr``; return the port used.

    ``port`` may be a range (``"9464-9471"``): the first free port is taken, so several
    worker processes each get one. Calling it again for a port already served here
    returns that port. Raises :class:`OSError` naming the ports when none is free.
    """
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(
            "start_metrics_server needs prometheus-client: pip install 'loopwatch[prometheus]'"
        ) from None
    ports = port if isinstance(port, range) else parse_ports(port, "port")
    with _lock:
        for candidate in ports:
            if (addr, candidate) in _servers:
                return candidate
        last_error: OSError | None = None
        for candidate in ports:
            try:
                server, _thread = prometheus_client.start_http_server(
                    candidate, addr, registry or prometheus_client.REGISTRY
                )
            except OSError as error:
                last_error = error
                continue
            _servers[(addr, candidate)] = server
            logger.info("loopwatch metrics served on http://%s:%d/metrics", addr, candidate)
            return candidate
    raise OSError(
        f"cannot serve metrics on {addr} port(s) {ports.start}-{ports.stop - 1}: {last_error}; "
        f"choose a free port or a range with {PORT_VARIABLE}=9464-9471"
    )


def requested_server(
    port: int | str | None, addr: str | None, environ: Mapping[str, str] | None = None
) -> tuple[range, str] | None:
    """The metrics server asked for by options or ``LOOPWATCH_METRICS_*`` (``None``: none)."""
    environ = os.environ if environ is None else environ
    if addr is not None and (not isinstance(addr, str) or not addr.strip()):
        raise ValueError(f"metrics_addr={addr!r} is not an address; use e.g. '127.0.0.1'")
    if port is None:
        raw = environ.get(PORT_VARIABLE, "").strip()
        if not raw:
            return None
        ports = parse_ports(raw, PORT_VARIABLE)
    else:
        ports = parse_ports(port)
    return ports, addr or environ.get(ADDR_VARIABLE, "").strip() or "127.0.0.1"


def _forget_in_child() -> None:
    _servers.clear()


os.register_at_fork(after_in_child=_forget_in_child)
