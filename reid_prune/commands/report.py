"""Plain-text tables and number formatting for what the CLI prints."""

from __future__ import annotations

from typing import Any, Sequence

from ..precision import describe_text


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (K, M, G steps of 1000)."""
    for step, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= step:
            return f"{value / step:.2f}{suffix}{unit}"
    return f"{value:g}{unit}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table with a rule under the header."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def metric_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows for a model report: rank metrics in percent, size, cost, latency."""
    rows = [(key, f"{report[key]:.2f}%") for key in ("mAP", "rank1", "rank5", "rank10", "mINP") if key in report]
    if "params" in report:
        rows.append(("params", human(report["params"])))
    if "macs" in report:
        rows.append(("MACs", human(report["macs"])))
        rows.append(("FLOPs", human(report["flops"])))
    if "precision" in report:
        rows.append(("computed in", f"{report['precision']}, {report['memory_format']}"))
    setting = report.get("latency_setting")
    for batch, ms in report.get("latency_ms", {}).items():
        rows.append((f"latency {batch}" + (f" ({describe_text(setting)})" if setting else ""), f"{ms:.2f} ms/image"))
    return rows


def achieved_line(report: dict[str, Any]) -> str:
    """The target next to what the pruned model keeps: MACs, params, and latency measured after surgery."""
    target = next((f"{key.removeprefix('target_')} {report[key]:g}" for key in
                   ("target_latency", "target_macs", "target_params") if report.get(key) is not None),
                  f"rate {report['rate']:g}" if report.get("rate") is not None else "per-group rates")
    got = report["achieved"]
    line = f"target: {target}; kept: MACs {got['macs_ratio']:.3f}, params {got['params_ratio']:.3f}, "
    if got["latency_ratio"] is None:
        return line + "latency not measured (eval.latency=false)"
    per_batch = ", ".join(f"{batch} {ratio:.3f}" for batch, ratio in got["latency_ratio"].items())
    return (line + f"latency {got['latency_ratio_mean']:.3f} measured after surgery ({per_batch}; "
            f"{describe_text(got['latency_setting'])})")

