"""``python -m bench [--quick] [--only SECTION ...] [--render FILE]``: run the benchmarks.

A full run (about 60-70 minutes on 2 cores) writes ``docs/benchmarks.md`` and
``docs/benchmarks-*.png`` and keeps its summary in ``bench/results/full.json``. ``--quick``
(under 3 minutes) writes to ``bench/results/raw/quick/`` instead, so it never replaces the
published figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    accuracy,
    busy,
    hostile,
    inserver,
    instructions,
    memory,
    micro,
    overhead,
    peers,
    report,
    switching,
    trio_cost,
)
from .common import RAW_DIR, ROOT, machine

SECTIONS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "micro": micro.run,
    "switching": switching.run,
    "accuracy": accuracy.run,
    "overhead": overhead.run,
    "inserver": inserver.run,
    "memory": memory.run,
    "instructions": instructions.run,
    "peers": peers.run,
    "trio": trio_cost.run,
    "hostile": hostile.run,
    "busy": busy.run,
}
NEEDS_WRK = {"overhead", "inserver", "memory"}


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
    parser.add_argument(
        "--commit", metavar="REV",
        help="benchmark the loopwatch/, example/ and bench/ of a git revision (exported to "
        "a temporary directory), not the working tree; results are copied back here",
    )  # fmt: skip
    return parser.parse_args(argv)


def _git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return out.stdout.strip()


def code_version() -> dict[str, str]:
    """The commit the benchmarked code comes from, and whether it had local changes."""
    stamp = ROOT / ".bench-commit"
    if stamp.exists():  # an exported revision (see --commit)
        return {"commit": stamp.read_text().strip(), "dirty": "no"}
    dirty = _git("status", "--porcelain", "--", "loopwatch", "example")
    return {"commit": _git("rev-parse", "--short", "HEAD"), "dirty": "yes" if dirty else "no"}


def run_at_commit(rev: str, argv: list[str]) -> int:
    """Export ``rev`` and run ``python -m bench argv`` there; copy the results back."""
    commit = _git("rev-parse", "--short", rev)
    if not commit:
        print(f"unknown revision {rev!r}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="loopwatch-bench-") as tmp:
        archive = Path(tmp) / "code.tar"
        subprocess.run(
            ["git", "archive", "--format=tar", "-o", str(archive), commit,
             "loopwatch", "example", "bench", "pyproject.toml"],
            cwd=ROOT, check=True,
        )  # fmt: skip
        tree = Path(tmp) / "tree"
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        (tree / ".bench-commit").write_text(commit + "\n")
        (tree / "docs").mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        command = [sys.executable, "-m", "bench", *argv]
        code = subprocess.run(command, cwd=tree, env=env, check=False).returncode
        if code != 0:
            return code
        quick = "--quick" in argv
        source_dir = tree / ("bench/results/raw/quick" if quick else "docs")
        target_dir = RAW_DIR / "quick" if quick else ROOT / "docs"
        target_dir.mkdir(parents=True, exist_ok=True)
        for file in source_dir.glob("benchmarks*"):
            shutil.copy2(file, target_dir / file.name)
        summary = "bench/results/raw/quick.json" if quick else "bench/results/full.json"
        (ROOT / summary).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / summary, ROOT / summary)
        print(f"results of {commit} copied to {target_dir} and {summary}")
    return 0


def _keep_other_sections(results: dict[str, Any], previous: dict[str, Any]) -> None:
    """An ``--only`` run adds its sections to the saved summary instead of replacing it:
    the sections it did not run keep their published figures, and the page says which run
    they come from."""
    kept = [s for s in previous.get("sections", []) if s not in results["sections"]]
    for name in kept:
        results[name] = previous[name]
    results["sections"] = kept + results["sections"]
    if kept:
        earlier = previous.get("kept_from") or {
            key: previous.get(key) for key in ("command", "date", "runtime_s", "code")
        }
        results["kept_from"] = {**earlier, "sections": kept}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.commit:
        given = list(argv if argv is not None else sys.argv[1:])
        rest = []
        skip = False
        for arg in given:  # drop "--commit REV" / "--commit=REV"
            if skip:
                skip = False
            elif arg == "--commit":
                skip = True
            elif not arg.startswith("--commit="):
                rest.append(arg)
        return run_at_commit(args.commit, rest)
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
    for needs_valgrind in ("instructions", "trio"):
        if needs_valgrind in sections and not instructions.available():
            print("valgrind is not installed (Debian: apt-get install valgrind): "
                  f"the {needs_valgrind} section is left out", file=sys.stderr)  # fmt: skip
            sections.remove(needs_valgrind)
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(),
        "mode": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench"
        + (" --quick" if args.quick else "")
        + "".join(f" --only {s}" for s in args.only or []),
        "code": code_version(),
        "sections": [],
        "failed": {},
    }
    for name in sections:
        section_started = time.monotonic()
        print(f"[{name}] ...", flush=True)
        try:
            results[name] = SECTIONS[name](args.quick)
        except Exception:  # report the others; the page says which section failed
            traceback.print_exc()
            results["failed"][name] = traceback.format_exc(limit=3)[-2000:]
            continue
        results["sections"].append(name)
        print(f"[{name}] done in {time.monotonic() - section_started:.0f} s", flush=True)
    results["runtime_s"] = time.monotonic() - started
    if args.only and summary_path.exists():
        _keep_other_sections(results, json.loads(summary_path.read_text()))
    results["foreign_cpu"] = report.foreign_cpu(results)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    results["summary_path"] = str(summary_path.relative_to(ROOT))
    summary_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.render(results, out_dir, out_dir / "benchmarks.md")
    print(f"wrote {out_dir / 'benchmarks.md'} and {summary_path} "
          f"in {results['runtime_s'] / 60:.1f} min")  # fmt: skip
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
