"""`python -m bench`: run every benchmark that exists and print where results went."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main() -> int:
    """Run each ``bench/<name>.py`` that defines ``main()``."""
    names = sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )
    if not names:
        print("no benchmarks yet")
        return 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        runner = getattr(module, "main", None)
        if runner is not None:
            print(f"== bench/{name}", flush=True)
            runner()
    return 0


if __name__ == "__main__":
    sys.exit(main())
