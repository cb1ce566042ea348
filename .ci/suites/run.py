"""Run Starlette's and FastAPI's own test suites plain and with loopwatch injected.

    python3 .ci/suites/run.py [SUITE ...]     # default: every suite in suites.toml
    python3 .ci/suites/run.py --install-only  # only set up .venv-suites (CI does it early)
    python3 .ci/suites/run.py --installed     # run without installing again

For each suite pinned in ``suites.toml`` it downloads the sdist from PyPI (the tests ship
in it), installs the suite with its declared test dependency groups and loopwatch from this
checkout into ``.venv-suites``, and runs the suite twice: plain, and with
``LoopWatchInstrumentor().instrument()`` applied by the ``loopwatch_inject`` pytest plugin.
Both runs include the suites' asyncio and trio parametrisations. It compares per-test
outcomes from the JUnit XML reports and exits non-zero when a test fails only with
loopwatch, or when the injection reached no app. Reports and logs go to .cache/suites/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = ROOT / ".cache" / "suites"
VENV = ROOT / ".venv-suites"
PYTHON = VENV / "bin" / "python"
FAILING = ("failure", "error")
# -n: pytest-xdist workers (FastAPI's test group has it; its own script runs -n auto
# --dist loadgroup). --timeout: pytest-timeout ends a stuck test instead of hanging CI.
WORKERS = os.environ.get("LOOPWATCH_SUITES_WORKERS", "2")
PYTEST_ARGS = [
    *("-q", "-n", WORKERS, "--dist", "loadgroup", "--timeout=120"),
    *("-p", "no:cacheprovider", "-p", "no:sugar", "-p", "no:loopwatch"),
    *("-p", "loopwatch_inject"),
]


@dataclass
class Run:
    outcomes: dict[str, tuple[str, str]]  # test id -> (outcome, first line of message)
    exit_code: int
    seconds: float
    stacks: tuple[int, int] = (0, 0)  # (stacks built, stacks with LoopWatchMiddleware)

    def failing(self) -> set[str]:
        return {test for test, (outcome, _) in self.outcomes.items() if outcome in FAILING}


def main(argv: list[str]) -> int:
    suites = tomllib.loads((HERE / "suites.toml").read_text())
    flags = {arg for arg in argv if arg.startswith("--")}
    if flags - {"--install-only", "--installed"}:
        sys.exit(f"unknown option(s) {sorted(flags)}; see the usage in {__file__}")
    names = [arg for arg in argv if arg not in flags] or list(suites)
    unknown = [name for name in names if name not in suites]
    if unknown:
        sys.exit(f"unknown suite(s) {unknown}; suites.toml has {list(suites)}")
    chosen = {name: suites[name] for name in names}
    if "--installed" in flags and PYTHON.exists():
        sources = {name: unpack(download(name, suite["version"])) for name, suite in chosen.items()}
    else:
        sources = install(chosen)
    if "--install-only" in flags:
        return 0
    problems, rows = [], []
    for name in names:
        plain = run_suite(name, suites[name], sources[name], inject=False)
        injected = run_suite(name, suites[name], sources[name], inject=True)
        rows.append((name, plain, injected))
        problems += check(name, suites[name].get("expected", {}), plain, injected)
    summarize(rows)
    for problem in problems:
        print(f"ERROR: {problem}")
    return 1 if problems else 0


def install(suites: dict[str, dict]) -> dict[str, Path]:
    """The venv with loopwatch (editable) and each suite's sdist plus its test groups."""
    if not PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(PYTHON), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "pip>=25.1"], check=True)  # --group (PEP 735) needs pip 25.1
    requirements, groups, sources = [f"-e{ROOT}[instrument]"], [], {}
    for name, suite in suites.items():
        sdist = download(name, suite["version"])
        sources[name] = unpack(sdist)
        extras = f"[{','.join(suite['extras'])}]" if suite.get("extras") else ""
        requirements.append(f"{name}{extras} @ {sdist.as_uri()}")
        for group in suite["groups"]:
            groups += ["--group", f"{sources[name] / 'pyproject.toml'}:{group}"]
    subprocess.run([*pip, *requirements, *groups], check=True)
    return sources


def download(name: str, version: str) -> Path:
    sdist = CACHE / f"{name}-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [
                str(PYTHON),
                "-m",
                "pip",
                "download",
                "-q",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-d",
                str(CACHE),
                f"{name}=={version}",
            ],
            check=True,
        )
    return sdist


def unpack(sdist: Path) -> Path:
    source = CACHE / "src" / sdist.name.removesuffix(".tar.gz")
    if not source.exists():
        with tarfile.open(sdist) as archive:
            archive.extractall(source.parent, filter="data")
    return source


def run_suite(name: str, suite: dict, source: Path, *, inject: bool) -> Run:
    mode = "injected" if inject else "plain"
    results = CACHE / "results"
    results.mkdir(parents=True, exist_ok=True)
    report, log, counts = (results / f"{name}-{mode}.{ext}" for ext in ("xml", "log", "count"))
    counts.unlink(missing_ok=True)
    env = dict(
        os.environ,
        LOOPWATCH_SUITES_INJECT="1" if inject else "0",
        LOOPWATCH_SUITES_COUNT_FILE=str(counts),
    )
    paths = [HERE, *(source / path for path in suite.get("pythonpath", []))]
    env["PYTHONPATH"] = os.pathsep.join(map(str, paths))
    deselect = [arg for prefix in suite.get("deselect", []) for arg in ("--deselect", prefix)]
    command = [
        str(PYTHON),
        "-m",
        "pytest",
        *PYTEST_ARGS,
        f"--junit-xml={report}",
        *deselect,
        *suite["paths"],
    ]
    start = time.monotonic()
    with log.open("w") as out:
        exit_code = subprocess.run(
            command,
            cwd=source,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        ).returncode
    seconds = time.monotonic() - start
    last = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
    print(f"{name} {mode}: {last[0]}  [{seconds:.0f} s, log {log.relative_to(ROOT)}]", flush=True)
    run = Run(read_outcomes(report), exit_code, seconds)
    if counts.exists():
        rows = [line.split() for line in counts.read_text().splitlines() if line.strip()]
        run.stacks = (sum(int(r[0]) for r in rows), sum(int(r[1]) for r in rows))
    return run


def read_outcomes(report: Path) -> dict[str, tuple[str, str]]:
    outcomes: dict[str, tuple[str, str]] = {}
    if not report.exists():
        return outcomes
    for case in ET.parse(report).iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in (*FAILING, "skipped"):
                outcome = child.tag
                message = (child.get("message") or "").strip().split("\n")[0][:160]
                if child.tag in FAILING:
                    break
        outcomes[test] = (outcome, message)
    return outcomes


def only_with_loopwatch(plain: Run, injected: Run) -> list[str]:
    """Tests failing only when injected, and tests of the plain run missing from it."""
    missing = set(plain.outcomes) - set(injected.outcomes)
    return sorted((injected.failing() - plain.failing()) | missing)


def check(name: str, expected: dict[str, str], plain: Run, injected: Run) -> list[str]:
    """What fails CI; tests in ``expected`` (suites.toml) are only noted, with their reason."""
    problems = []
    for mode, run in (("plain", plain), ("injected", injected)):
        if run.exit_code not in (0, 1) or not run.outcomes:
            problems.append(
                f"{name} {mode}: pytest exited {run.exit_code} with "
                f"{len(run.outcomes)} tests reported (see its log)"
            )
    only = [test for test in only_with_loopwatch(plain, injected) if test not in expected]
    for test in sorted(set(only_with_loopwatch(plain, injected)) & set(expected)):
        print(f"NOTE: {name}: {test} fails only with loopwatch, as expected: {expected[test]}")
    if only:
        problems.append(f"{name}: {len(only)} tests fail only with loopwatch:")
        for test in only[:25]:
            outcome, message = injected.outcomes.get(test, ("missing", "not in the injected run"))
            problems.append(f"  {test}  [{outcome}] {message}")
        if len(only) > 25:
            problems.append(f"  ... and {len(only) - 25} more (see the injected run's log)")
    if injected.stacks[1] == 0:
        problems.append(
            f"{name}: the injection reached no app (0 of {injected.stacks[0]} "
            "middleware stacks contain LoopWatchMiddleware)"
        )
    return problems


def summarize(rows: list[tuple[str, Run, Run]]) -> None:
    print("\n=== other projects' suites: plain vs loopwatch injected ===")
    header = (
        "suite",
        "tests",
        "failed plain",
        "failed injected",
        "only w/ loopwatch",
        "stacks instrumented",
        "time plain/injected",
    )
    print("  ".join(f"{h:>{max(len(h), 9)}}" for h in header))
    for name, plain, injected in rows:
        cells = (
            name,
            f"{len(plain.outcomes)}/{len(injected.outcomes)}",
            str(len(plain.failing())),
            str(len(injected.failing())),
            str(len(only_with_loopwatch(plain, injected))),
            f"{injected.stacks[1]}/{injected.stacks[0]}",
            f"{plain.seconds:.0f}/{injected.seconds:.0f} s",
        )
        print("  ".join(f"{c:>{max(len(h), 9)}}" for c, h in zip(cells, header, strict=True)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
