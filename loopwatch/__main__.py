"""The ``loopwatch`` command: ``loopwatch demo``, ``loopwatch --version``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from loopwatch._version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopwatch",
        description="Find the code that blocks your asyncio event loop.",
    )
    parser.add_argument("--version", action="version", version=f"loopwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the example app slow and fixed, and show what loopwatch finds",
        description=(
            "Serve the example FastAPI app (bottlenecks, optimized and process modes) on a "
            "local port, send it the article's requests and report stalls, loop delay and "
            "latency. Needs `pip install 'loopwatch[demo]'`; no Jaeger."
        ),
    )
    demo.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help=(
            "also export the traces over OTLP/HTTP, e.g. http://localhost:4318 (default: "
            "$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT if set)"
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loopwatch`` console script."""
    args = _parser().parse_args(argv)
    try:  # the demo's dependencies are an extra, so `loopwatch --help` works without them
        from loopwatch.demo import run_demo
    except ModuleNotFoundError as error:
        print(f"loopwatch demo: {error}; install the demo extra: pip install 'loopwatch[demo]'")
        return 2
    return run_demo(otlp_endpoint=args.otlp_endpoint)


if __name__ == "__main__":
    sys.exit(main())
