"""Run every benchmark and print a table (``python -m benchmarks [--quick]``)."""

from __future__ import annotations

import argparse
import sys

from . import (
    bench_cluster,
    bench_cluster_memory,
    bench_codec,
    bench_membership,
    bench_sim,
    bench_storage,
    bench_write_path,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args(argv)
    for module in (
        bench_sim,
        bench_codec,
        bench_cluster_memory,
        bench_storage,
        bench_membership,
        bench_write_path,
        bench_cluster,
    ):
        for line in module.run(quick=args.quick):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
