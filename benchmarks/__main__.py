"""Run the benchmarks and print their tables.

Usage: ``python -m benchmarks [--sizes 1000 10000] [--stores sqlite postgresql]``
``[--json results.json]``
``[--only tracking cinderlib drivers streaming] [--chart benchmarks.png]``
(``--help`` for the sizes of each benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from . import suite, tracking


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000],
                        help="numbers of volumes to scan (default: 1000)")
    parser.add_argument("--stores", nargs="+", choices=list(tracking.STORES),
                        default=["sqlite"],
                        help="stores the tracking scan runs on (default: sqlite); postgresql "
                             f"uses ${tracking.PG_DSN_ENV} or starts a throwaway server")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; best kept")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    suite.add_arguments(parser)
    args = parser.parse_args()
    rows = []
    for store in args.stores if "tracking" in args.only else ():
        for n in args.sizes:
            rows += tracking.report(n, asyncio.run(tracking.run(n, args.repeat, store)), store)
    tracking.compare(rows)
    rows = suite.run(args, rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
