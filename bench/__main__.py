"""Run the benchmarks: every bench/bench_*.py module's main(), in name order.

    python -m bench            # all of them
    python -m bench scan ...   # only bench_scan (names without the "bench_" prefix)
    python -m bench --list     # their names, running none

A module's main() may return False to say it missed its targets; a benchmark that raises is reported
and the others still run. The exit status is 1 if any benchmark raised or returned False.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from pathlib import Path


def discover() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run Switchboard's benchmarks; each "
                                     "writes its results under bench/results/.")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. scan routing")
    parser.add_argument("--list", action="store_true", help="print the benchmarks' names and run none")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(n.removeprefix("bench_") for n in discover()))
        return 0
    wanted = set(args.names)
    names = [n for n in discover() if not wanted or n in wanted or n.removeprefix("bench_") in wanted]
    unknown = wanted - {n for n in discover()} - {n.removeprefix("bench_") for n in discover()}
    if unknown or not names:
        parser.error(f"no benchmark named {', '.join(sorted(unknown or wanted))}; have "
                     + ", ".join(n.removeprefix("bench_") for n in discover()))
    failed: list[str] = []
    for name in names:
        print(f"== {name} ==", flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            if module.main() is False:
                failed.append(f"{name} (missed its targets)")
        except Exception:
            traceback.print_exc()
            failed.append(f"{name} (raised)")
        print(flush=True)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
