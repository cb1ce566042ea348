"""Pin the dependencies of pyproject.toml to their declared floors, for CI's floor stage.

    python .ci/floors.py EXTRA...             constraints: ``name==floor`` for each ``>=``
    python .ci/floors.py --rest OTHER EXTRA...  OTHER's requirements that EXTRA... leave free

The first form covers the core dependencies and every extra reachable from EXTRA...:
``opentelemetry-api>=1.30`` becomes ``opentelemetry-api==1.30``. CI installs loopwatch with
those extras under these constraints, plus ``--rest test`` (the test tools, newest), and
runs unit tests: a floor that no longer works fails CI, not the user who has that version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(project: dict[str, Any], extras: list[str]) -> list[Requirement]:
    """The core dependencies and those of ``extras``, following ``loopwatch[...]``."""
    own = canonicalize_name(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    found = [Requirement(text) for text in project.get("dependencies", [])]
    seen: set[str] = set()
    pending = list(extras)
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        if extra not in optional:
            sys.exit(f"floors.py: pyproject.toml has no extra {extra!r}")
        seen.add(extra)
        for requirement in map(Requirement, optional[extra]):
            if canonicalize_name(requirement.name) == own:
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def floors(found: list[Requirement]) -> dict[str, str]:
    """``name==floor`` (with its marker) by package, for requirements with a ``>=``; the
    highest floor where extras declare several (as pip would resolve them)."""
    highest: dict[str, tuple[Version, str]] = {}
    for requirement in found:
        lowest = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        if not lowest:
            continue  # no floor declared (e.g. type stubs): pip picks the newest
        name = canonicalize_name(requirement.name)
        marker = f"; {requirement.marker}" if requirement.marker else ""
        if name not in highest or highest[name][0] < lowest[0]:
            highest[name] = (lowest[0], f"{name}=={lowest[0]}{marker}")
    return {name: pin for name, (_, pin) in highest.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="+", metavar="EXTRA")
    parser.add_argument("--rest", metavar="OTHER", help="print OTHER's unpinned requirements")
    args = parser.parse_args()
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pins = floors(requirements(project, args.extras))
    if args.rest is None:
        print("\n".join(sorted(pins.values())))
        return
    rest = {
        str(requirement)
        for requirement in requirements(project, [args.rest])
        if canonicalize_name(requirement.name) not in pins
    }
    print("\n".join(sorted(rest)))


if __name__ == "__main__":
    main()
