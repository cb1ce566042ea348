"""``python -m bench [--quick] [--only SECTION ...] [--render FILE]``: run the benchmarks.

A full run (about 15 minutes on 2 cores) writes ``docs/benchmarks.md`` and
``docs/benchmarks-*.png`` and keeps its summary in ``bench/results/full.json``. ``--quick``
(under 3 minutes) writes to ``bench/results/raw/quick/`` instead, so it never replaces the
published figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import accuracy, memory, micro, overhead, report
from .common import RAW_DIR, ROOT, machine

SECTIONS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "micro": micro.run,
    "accuracy": accuracy.run,
    "overhead": overhead.run,
    "memory": memory.run,
}
NEEDS_WRK = {"overhead", "memory"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (under 3 minutes)")
    parser.add_argument(
        "--only", action="append", choices=list(SECTIONS), metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)}); repeatable",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="directory for the report and figures")
    parser.add_argument("--render", type=Path, metavar="SUMMARY_JSON",
                        help="only re-render the report from a saved summary")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    mode = "quick" if args.quick else "full"
    out_dir = args.out or (RAW_DIR / "quick" if args.quick else ROOT / "docs")
    summary_path = RAW_DIR / "quick.json" if args.quick else ROOT / "bench/results/full.json"
    if args.render:
        results = json.loads(args.render.read_text())
        report.render(results, out_dir, out_dir / "benchmarks.md")
        print(f"rendered {out_dir / 'benchmarks.md'}")
        return 0
    sections = args.only or list(SECTIONS)
    if NEEDS_WRK & set(sections) and shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(),
        "mode": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench" + (" --quick" if args.quick else "")
        + "".join(f" --only {s}" for s in args.only or []),
        "sections": sections,
    }
    for name in sections:
        section_started = time.monotonic()
        print(f"[{name}] ...", flush=True)
        results[name] = SECTIONS[name](args.quick)
        print(f"[{name}] done in {time.monotonic() - section_started:.0f} s", flush=True)
    results["runtime_s"] = time.monotonic() - started
    results["foreign_cpu"] = report.foreign_cpu(results)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    results["summary_path"] = str(summary_path.relative_to(ROOT))
    summary_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.render(results, out_dir, out_dir / "benchmarks.md")
    print(f"wrote {out_dir / 'benchmarks.md'} and {summary_path} "
          f"in {results['runtime_s'] / 60:.1f} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
