"""anyio's own test suite under ``pytest --loopwatch``: the stalls it finds, and a check.

anyio's suite is a large real async suite whose package is in loopwatch's default skip
list, so it exercises the pytest plugin's rules for a library's own suite. This script
takes anyio's pinned sdist from PyPI, installs it editable (its code then lies under the
suite's rootdir) with its test requirements and loopwatch into ``.venv-anyio``, runs the
suite on the asyncio backend (trio and uvloop are not installed, so their variants skip)
without network tests (nor its IPv6 TCP tests where ``localhost`` has no IPv6 address),
and reports every stall from the JUnit XML (the plugin puts each
stall in the test's properties). It fails when:

- a stall fails a test without being charged to code in anyio's ``src/anyio`` or
  ``tests`` (the test's or anyio's own code);
- any stall names a loopwatch frame as its culprit or offender;
- a test fails for another reason, passes without loopwatch, and fails with it again
  (a failure loopwatch added that is not a stall).

Usage: .venv/bin/python .ci/anyio_suite.py [--from-report | --install-only | --installed]
(from the repository root; --from-report checks the last run's JUnit XML again instead of
running the suite; --install-only sets up .venv-anyio and stops, --installed skips that:
CI installs early, alongside other stages)
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import venv
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tomllib

ANYIO = "anyio==4.16.0"
ANYIO_SHA256 = "59bb03251907983d1603d27c3087ddb1e93299ea2163adcdba37899a4fb12ffb"
PLATFORM_EXTRAS = ("uvloop", "winloop")  # the asyncio backend only: no uvloop variant
PYTEST_ARGS = (
    *("-m", "not network", "-p", "no:cacheprovider", "-q", "--no-header"),
    *("-o", "junit_family=xunit1"),  # testcases carry their file: node ids for re-runs
)

STALL_FAILURE = re.compile(r"(Failed: )?loopwatch: ")
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
VENV = ROOT / ".venv-anyio"


def sh(*args: str | Path) -> None:
    print("$", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, stdin=subprocess.DEVNULL)


def fetch_sdist() -> Path:
    """anyio's sdist, checked against its pinned hash, unpacked under .cache."""
    name, version = ANYIO.split("==")
    tree = CACHE / f"{name}-{version}"
    if (tree / "pyproject.toml").exists():
        return tree
    downloads = CACHE / "sdist"
    downloads.mkdir(parents=True, exist_ok=True)
    pinned = downloads / "anyio-requirement.txt"
    pinned.write_text(f"{ANYIO} --hash=sha256:{ANYIO_SHA256}\n")
    pip = (sys.executable, "-m", "pip")
    sh(*pip, "download", "-q", "--no-deps", "--no-binary", "anyio", "--require-hashes",
       "-r", pinned, "-d", downloads)  # fmt: skip
    with tarfile.open(downloads / f"{name}-{version}.tar.gz") as archive:
        archive.extractall(CACHE, filter="data")
    return tree


def test_requirements(tree: Path) -> list[str]:
    """anyio's ``test`` dependency group, without uvloop/winloop."""
    groups = tomllib.loads((tree / "pyproject.toml").read_text())["dependency-groups"]
    return [
        " ".join(req.split())
        for req in groups["test"]
        if isinstance(req, str) and not req.strip().startswith(PLATFORM_EXTRAS)
    ]


def install(tree: Path) -> Path:
    if not (VENV / "bin" / "python").exists():
        venv.create(VENV, with_pip=True)
    python = VENV / "bin" / "python"
    sh(python, "-m", "pip", "install", "-q", "-e", tree, "-e", ROOT, *test_requirements(tree))
    return python


def localhost_has_ipv6() -> bool:
    try:
        return bool(socket.getaddrinfo("localhost", 0, socket.AF_INET6))
    except OSError:
        return False


def run_suite(python: Path, tree: Path, report: Path, *args: str) -> int:
    command = [str(python), "-m", "pytest", *PYTEST_ARGS, f"--junit-xml={report}", *args]
    if not localhost_has_ipv6():  # anyio's TCP tests then fail with or without loopwatch
        command += ["-k", "not (TestTCPStream and (ipv6 or dualstack or multi))"]
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, check=False, cwd=tree, stdin=subprocess.DEVNULL)
    return result.returncode


@dataclass
class Case:
    nodeid: str
    outcome: str  # passed, failed, skipped
    message: str
    stalls: list[dict[str, object]]


def read_cases(report: Path) -> list[Case]:
    cases = []
    for case in ET.parse(report).iter("testcase"):
        file, classname = case.get("file", ""), case.get("classname", "")
        module = file.removesuffix(".py").replace("/", ".")
        classes = classname[len(module) + 1 :].split(".") if classname != module else []
        nodeid = "::".join([file, *classes, case.get("name", "")])
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = "failed" if tag != "skipped" else "skipped"
                if found.get("type") == "pytest.xfail":
                    outcome = "xfailed"
                message = found.get("message", "")
                break
        stalls = [
            json.loads(prop.get("value", "{}"))
            for prop in case.iter("property")
            if prop.get("name") == "loopwatch_stall"
        ]
        cases.append(Case(nodeid, outcome, message, stalls))
    return cases


def frame_text(frame: object) -> str:
    if not isinstance(frame, dict):
        return "-"
    return f"{frame['function']} ({frame['file']}:{frame['line']})"


def where_charged(frame: object, tree: Path) -> str | None:
    """ "the test" or "anyio" when ``frame`` is the suite's or anyio's own code."""
    if not isinstance(frame, dict):
        return None
    path = Path(os.path.realpath(str(frame["file"])))
    for part, label in (("tests", "the test"), ("src/anyio", "anyio")):
        if path.is_relative_to(tree.resolve() / part):
            return label
    return None


def names_loopwatch(frame: object) -> bool:
    return isinstance(frame, dict) and str(frame["function"]).startswith("loopwatch.")


def main() -> int:
    tree = fetch_sdist()
    python = VENV / "bin" / "python"
    if "--installed" not in sys.argv[1:] or not python.exists():
        python = install(tree)
    if "--install-only" in sys.argv[1:]:
        return 0
    report = CACHE / "anyio-loopwatch.xml"
    if "--from-report" not in sys.argv[1:]:  # else check the last run's report again
        rc = run_suite(python, tree, report, "--loopwatch")
        print(f"anyio suite with --loopwatch: exit {rc}")
    cases = read_cases(report)
    problems: list[str] = []

    ran = [c for c in cases if c.outcome != "skipped"]  # xfailed tests ran
    stalls = [(c, s) for c in cases for s in c.stalls]
    verdicts = Counter(str(s["verdict"]) for _, s in stalls)
    print(f"\n=== {ANYIO} suite under --loopwatch ===")
    print(f"tests run: {len(ran)} (skipped {len(cases) - len(ran)}), stalls: {len(stalls)} "
          f"({', '.join(f'{n} {v}' for v, n in sorted(verdicts.items())) or 'none'})")  # fmt: skip
    for case, stall in stalls:
        charged = where_charged(stall["culprit"], tree)
        outcome = f", test {case.outcome}" if case.outcome not in ("failed", "passed") else ""
        print(
            f"  [{stall['verdict']}{outcome}] {case.nodeid} ({stall['where']}): "
            f"{stall['duration']:.3f} s, cause {stall['cause']}, "
            f"culprit {frame_text(stall['culprit'])}"
            + (f" -> charged to {charged}" if charged else "")
            + (f", offender {frame_text(stall['offender'])}" if not charged else "")
        )
        if stall["verdict"] == "failed" and charged is None:
            problems.append(f"{case.nodeid}: a stall failed it without naming anyio's or "
                            f"the test's code: {frame_text(stall['culprit'])}")  # fmt: skip
        for role in ("culprit", "offender"):
            if names_loopwatch(stall[role]):
                problems.append(f"{case.nodeid}: a loopwatch frame is the {role}: "
                                f"{frame_text(stall[role])}")  # fmt: skip

    by_stall = [c for c in cases if c.outcome == "failed" and STALL_FAILURE.match(c.message)]
    for case in by_stall:
        if not any(s["verdict"] == "failed" for s in case.stalls):
            problems.append(f"{case.nodeid}: failed by loopwatch with no failing stall recorded")
    print(f"failures --loopwatch added (stalls): {len(by_stall)}")
    others = [c for c in cases if c.outcome == "failed" and c not in by_stall]
    if others:
        print(f"\n{len(others)} tests failed for other reasons; re-run without loopwatch:")
        problems += recheck(python, tree, others)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("anyio suite check:", "FAILED" if problems else "OK")
    return 1 if problems else 0


def recheck(python: Path, tree: Path, cases: list[Case]) -> list[str]:
    """A failure that is not a stall is loopwatch's doing only if it goes away without
    loopwatch and comes back with it (anyio's suite has timing-sensitive tests)."""
    ids = [c.nodeid for c in cases]
    for case in cases:
        print(f"  {case.nodeid}: {case.message[:160]}")
    without = CACHE / "anyio-without.xml"
    run_suite(python, tree, without, "--tb=line", "-p", "no:loopwatch", *ids)
    passing = [c.nodeid for c in read_cases(without) if c.outcome == "passed"]
    print(f"  without loopwatch: {len(ids) - len(passing)} fail again, {len(passing)} pass")
    if not passing:
        return []
    again = CACHE / "anyio-again.xml"
    run_suite(python, tree, again, "--tb=line", "--loopwatch", *passing)
    failing = [c.nodeid for c in read_cases(again) if c.outcome == "failed"]
    print(f"  with loopwatch again: {len(failing)} fail, {len(passing) - len(failing)} pass")
    return [f"{nodeid}: fails with loopwatch only, not by a stall" for nodeid in failing]


if __name__ == "__main__":
    sys.exit(main())
