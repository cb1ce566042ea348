"""Build the sdist and wheel, check what they hold, and run the wheel outside the checkout.

    .venv/bin/python .ci/check_dist.py [--keep DIR]

1. ``python -m build``; ``twine check --strict`` and ``check-wheel-contents``.
2. The wheel holds every module of ``loopwatch/`` in the repository, ``py.typed``, the
   demo's copy of ``example/`` and the LICENSE; no tests. Its METADATA has
   ``License-Expression``, ``License-File`` and ``Project-URL``.
3. The sdist holds LICENSE, pyproject.toml, ``loopwatch/`` and ``example/`` (the wheel is
   built from it), and no tests (they need the repository around them).
4. A fresh venv in a temporary directory gets ``<wheel>[demo]``; there, away from any
   checkout, ``loopwatch --version`` prints the version and ``loopwatch demo`` exits 0
   and names the example's culprit.
"""

from __future__ import annotations

import argparse
import email.parser
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from loopwatch._version import __version__  # noqa: E402

DEMO_TIMEOUT_SECONDS = 180
ENVIRON = {
    key: value
    for key, value in os.environ.items()
    if key not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    and not key.startswith(("OTEL_", "LOOPWATCH_", "DEMO_"))
}
"""The environment of every command: no checkout on the path, no telemetry settings."""


def run(*command: str | Path, cwd: Path = REPO) -> str:
    """Run ``command``, echo it with its time, fail CI with its output if it fails."""
    started = time.monotonic()
    print("$", " ".join(map(str, command)), flush=True)
    result = subprocess.run(
        list(map(str, command)),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
        check=False,
        env={**ENVIRON, "COLUMNS": "120"},
    )
    print(f"  ({time.monotonic() - started:.1f} s)")
    if result.returncode != 0:
        sys.exit(f"FAILED (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {message}")


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"loopwatch-{__version__}.dist-info"
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "loopwatch").rglob("*.py")}
    example = {
        f"loopwatch/demo/app/example/{path.name}" for path in (REPO / "example").glob("*.py")
    }
    missing = sorted((modules | example | {"loopwatch/py.typed"}) - names)
    check(not missing, f"the wheel lacks {missing} (a new package not listed in pyproject?)")
    check(f"{info}/licenses/LICENSE" in names, "the wheel has no LICENSE")
    tests = sorted(name for name in names if name.startswith(("tests/", "bench/")))
    check(not tests, f"the wheel holds tests or benchmarks: {tests}")
    check(metadata["License-Expression"] == "Apache-2.0", "METADATA: License-Expression")
    check(metadata.get_all("License-File") == ["LICENSE"], "METADATA: License-File")
    check(bool(metadata.get_all("Project-URL")), "METADATA: no Project-URL")
    print(f"wheel OK: {len(names)} files, License-File and Project-URL in METADATA")


def check_sdist(sdist: Path) -> None:
    root = f"loopwatch-{__version__}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(root) for name in archive.getnames()}
    for needed in ("LICENSE", "pyproject.toml", "README.md", "example/work.py"):
        check(needed in names, f"the sdist lacks {needed}")
    tests = sorted(name for name in names if name.startswith("tests"))
    check(not tests, f"the sdist holds tests without their support files: {tests}")
    print(f"sdist OK: {len(names)} entries, no tests")


def check_installed(wheel: Path, work: Path) -> None:
    """Install ``wheel[demo]`` into a fresh venv under ``work``; run it from there."""
    env = work / "venv"
    venv.create(env, with_pip=True)
    run(env / "bin" / "pip", "install", "-q", f"{wheel}[demo]", cwd=work)
    version = run(env / "bin" / "loopwatch", "--version", cwd=work)
    check(version.strip() == f"loopwatch {__version__}", f"--version printed {version!r}")
    started = time.monotonic()
    report = run(env / "bin" / "loopwatch", "demo", cwd=work)
    check("stalls in example.work.cpu_heavy_blocking_work" in report, f"demo said:\n{report}")
    print(f"installed wheel OK: {version.strip()}; demo ran in {time.monotonic() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build and install in DIR, and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loopwatch-dist-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        dist = work / "dist"
        run(sys.executable, "-m", "build", "--outdir", dist, REPO)
        (wheel,) = dist.glob("*.whl")
        (sdist,) = dist.glob("*.tar.gz")
        run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)
        run(sys.executable, "-m", "check_wheel_contents", wheel)
        check_wheel(wheel)
        check_sdist(sdist)
        check_installed(wheel, work)


if __name__ == "__main__":
    main()
