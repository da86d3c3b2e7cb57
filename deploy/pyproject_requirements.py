"""Print the requirements of pyproject.toml (base, plus the named extras), one per line.

The images install dependencies from this list in a layer of their own, before the source is copied,
so editing code does not re-download torch. Standard library only: it runs before anything is installed.

    python deploy/pyproject_requirements.py pyproject.toml worker > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml defines {sorted(optional)}")
    out = list(project.get("dependencies", []))
    for extra in extras:
        out += optional[extra]
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2:])))
