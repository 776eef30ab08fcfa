"""The cluster benchmark's report: markdown tables and PNG plots from its results (a dict,
also written as JSON). matplotlib is optional: without it the plots are skipped with a note."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BASELINE_ORDER = ("pysyncobj-nobatch", "pysyncobj")
"""The PySyncObj mode ratios are taken against: its fastest, else its defaults."""


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def write_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The 16-byte write-only rows (the main table's), in run order."""
    return [r for r in results["rows"] if r["scenario"] == "writes" and "ops_per_s" in r]


def main_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of the summary and the plots: 16-byte writes on 3 nodes (and the null node's,
    a single process)."""
    return [
        r
        for r in write_rows(results)
        if (r["nodes"] == 3 or r["system"] == "null") and r["value_bytes"] == 16
    ]


def find_row(rows: Sequence[Mapping[str, Any]], **match: object) -> Mapping[str, Any] | None:
    """The first row whose fields equal ``match``."""
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def baseline_row(
    rows: Sequence[Mapping[str, Any]], row: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The PySyncObj row measured like ``row`` (same scenario, nodes, load, size, mix)."""
    for system in BASELINE_ORDER:
        found = find_row(
            rows,
            system=system,
            scenario=row["scenario"],
            nodes=row["nodes"],
            outstanding=row["outstanding"],
            value_bytes=row["value_bytes"],
            read_ratio=row["read_ratio"],
        )
        if found is not None and found.get("ops_per_s"):
            return found
    return None


def null_row(rows: Sequence[Mapping[str, Any]], row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The null node's row measured like ``row``."""
    found = find_row(
        rows,
        system="null",
        scenario=row["scenario"],
        outstanding=row["outstanding"],
        value_bytes=row["value_bytes"],
        read_ratio=row["read_ratio"],
    )
    if found is None or not found.get("ops_per_s"):
        return None
    return found


def stall_note(row: Mapping[str, Any]) -> str | None:
    """The note for a row in which no request completed (``None`` if some did): the system
    stalled for the whole window, which its ``0`` alone would not say."""
    if row.get("ops_per_s"):
        return None
    mix = {0.0: "writes", 1.0: "reads"}.get(row["read_ratio"], f"{row['read_ratio']:.0%} reads")
    return (
        f"{row['system']}, {row['nodes']} nodes, {row['outstanding']} outstanding, "
        f"{row['value_bytes']:,} B {mix}: no request completed in the "
        f"{row.get('window_s', 0):g} s window ({row.get('errors', 0)} errors): the system "
        "stalled; rerun before reading anything into that row"
    )


def row_line(rows: Sequence[Mapping[str, Any]], row: Mapping[str, Any]) -> str:
    """One row of the detailed table, with its ratios to PySyncObj and to the null node."""
    latency = row.get("write_ms") or row.get("read_ms") or {}
    base, null = baseline_row(rows, row), null_row(rows, row)
    vs_base = (
        f"{row['ops_per_s'] / base['ops_per_s']:.2f}x" if base and row.get("ops_per_s") else "-"
    )
    if base is row:
        vs_base = "baseline"
    vs_null = (
        f"{row['ops_per_s'] / null['ops_per_s']:.3f}" if null and row.get("ops_per_s") else "-"
    )
    mix = {0.0: "writes", 1.0: "reads"}.get(row["read_ratio"], f"{row['read_ratio']:.0%} reads")
    return (
        f"| {row['system']} | {row['nodes']} | {row['outstanding']} | {row['value_bytes']:,} "
        f"| {mix} "
        f"| {_fmt(row.get('ops_per_s'))} | {_ms(latency.get('p50'))} | {_ms(latency.get('p99'))} "
        f"| {_ms(latency.get('p999'))} | {_fmt(row.get('leader_cpu_us_per_op'))} | {vs_base} "
        f"| {vs_null} | {row.get('errors', 0) + row.get('redirects', 0)} |"
    )


def markdown(results: Mapping[str, Any]) -> str:
    """The report: the summary table, every row, failover, catch-up, the floors."""
    rows: list[dict[str, Any]] = results["rows"]
    lines = [f"# Cluster benchmark, {results['started']}", ""]
    machine = results["machine"]
    lines.append(
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), load average "
        f"{' '.join(f'{x:.2f}' for x in machine['load_before'])} before, "
        f"{' '.join(f'{x:.2f}' for x in machine['load_after'])} after; "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    )
    lines += ["", f"Command: `{results['command']}`", ""]
    summary = _summary(results)
    if summary:
        lines += ["## Summary (3 nodes, 16-byte writes)", "", *summary, ""]
    lines += [
        "## Every row",
        "",
        "| system | nodes | outstanding | value B | mix | ops/s | p50 ms | p99 ms | p99.9 ms "
        "| leader CPU µs/op | vs PySyncObj | of null | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [row_line(rows, row) for row in rows if row.get("ops_per_s") is not None]
    failed = [row for row in rows if row.get("failed")]
    for row in failed:
        lines.append(f"\n{row['system']} {row['scenario']} N={row['outstanding']}: {row['failed']}")
    if results.get("failover"):
        lines += [
            "",
            "## Failover (kill -9 of the leader → first committed write)",
            "",
            "| system | runs | median s | max s | restarted node caught up, median s |",
            "|---|---|---|---|---|",
        ]
        for system, f in results["failover"].items():
            lines.append(
                f"| {system} | {len(f['times_s'])} | {_fmt(f.get('median_s'), 3)} "
                f"| {_fmt(f.get('max_s'), 3)} | {_fmt(f.get('rejoin_median_s'), 2)} |"
            )
    if results.get("catchup"):
        lines += [
            "",
            "## Catch-up of a follower stopped while the entries were written",
            "",
            "| system | entries behind | load writes/s (1024 outstanding) "
            "| caught up, s after it resumed |",
            "|---|---|---|---|",
        ]
        for system, c in results["catchup"].items():
            lines.append(
                f"| {system} | {c['entries']:,} | {_fmt(c.get('load_per_s'))} "
                f"| {_fmt(c.get('caught_up_s'), 2)} |"
            )
    floors = results.get("floors", {})
    if floors:
        lines += ["", "## Floors (same run)", ""]
        lines += [
            f"- {name}: {_fmt(v, 1) if isinstance(v, float) else v}" for name, v in floors.items()
        ]
    notes = results.get("notes", [])
    if notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _summary(results: Mapping[str, Any]) -> list[str]:
    rows = write_rows(results)
    three = main_rows(results)
    if not three:
        return []
    loads = sorted({r["outstanding"] for r in three})
    systems = list(dict.fromkeys(r["system"] for r in three))
    head = "| system | " + " | ".join(f"writes/s at {n}" for n in loads)
    head += " | p50 ms at 1 | leader CPU µs/write at 1 | at 128 | failover median s |"
    lines = [head, "|---" * (len(loads) + 5) + "|"]
    for system in systems:
        cells = []
        for n in loads:
            row = find_row(three, system=system, outstanding=n)
            cell = _fmt(row["ops_per_s"]) if row else "-"
            base = baseline_row(rows, row) if row else None
            if row and base and system not in BASELINE_ORDER:
                cell += f" ({row['ops_per_s'] / base['ops_per_s']:.2f}x)"
            cells.append(cell)
        one = find_row(three, system=system, outstanding=1)
        busy = find_row(three, system=system, outstanding=128)
        failover = results.get("failover", {}).get(system, {})
        lines.append(
            f"| {system} | "
            + " | ".join(cells)
            + f" | {_ms((one or {}).get('write_ms', {}).get('p50'))}"
            + f" | {_fmt((one or {}).get('leader_cpu_us_per_op'))}"
            + f" | {_fmt((busy or {}).get('leader_cpu_us_per_op'))}"
            + f" | {_fmt(failover.get('median_s'), 3)} |"
        )
    return lines


def plots(results: Mapping[str, Any], directory: Path) -> list[str]:
    """Write ``throughput.png`` (16-byte writes/s against requests outstanding, 3 nodes) and
    ``latency_cdf.png`` (the latency CDF of each system at 1 outstanding and at the largest
    load measured); return the file names, or a note if matplotlib is missing."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return ["(plots skipped: install matplotlib, e.g. pip install -e .[bench])"]
    rows = main_rows(results)
    if not rows:
        return []
    systems = list(dict.fromkeys(r["system"] for r in rows))
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    for system in systems:
        mine = sorted((r["outstanding"], r["ops_per_s"]) for r in rows if r["system"] == system)
        ax.plot([m[0] for m in mine], [m[1] for m in mine], marker="o", label=system)
    ax.set_xscale("log", base=2)
    loads = sorted({r["outstanding"] for r in rows})
    ax.set_xticks(loads, [str(n) for n in loads])
    ax.set_yscale("log")
    ax.set_xlabel("requests outstanding")
    ax.set_ylabel("acknowledged writes/s")
    ax.set_title("3 nodes (null: one process), 16-byte writes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(directory / "throughput.png")
    plt.close(fig)
    written.append("throughput.png")
    chosen = sorted({loads[0], loads[-1]})
    fig, axes = plt.subplots(
        1, len(chosen), figsize=(6.4 * len(chosen) / 1.4, 4.0), dpi=90, squeeze=False
    )
    for ax, n in zip(axes[0], chosen, strict=True):
        for system in systems:
            row = find_row(rows, system=system, outstanding=n)
            if row and row.get("write_cdf"):
                cdf = row["write_cdf"]
                ax.plot([p[0] for p in cdf], [p[1] for p in cdf], label=system)
        ax.set_xscale("log")
        ax.set_xlabel("write latency (ms)")
        ax.set_ylabel("fraction of writes")
        ax.set_title(f"{n} outstanding")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(directory / "latency_cdf.png")
    plt.close(fig)
    written.append("latency_cdf.png")
    return written
