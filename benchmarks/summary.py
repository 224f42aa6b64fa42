"""The issue-3 targets, per cell, over several runs of the benchmark: python3 -m benchmarks.summary
DIR [DIR ...], each DIR a --out of python3 -m benchmarks.

For each case and dtype, jaxlsq's ratios (primal to jnp.linalg.lstsq, value_and_grad to jnp's
value_and_grad, value_and_grad to its own primal, primal to torch's gels) and its error relative
to jnp's (against the refined reference), each run's figure and their median, as a Markdown
table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SYSTEM, BASELINE, TORCH = "jaxlsq", "jnp.linalg.lstsq", "torch(gels)"


def ratios(rows: list[dict]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(case, shape, dtype) -> the cell's ratios in one run."""
    index = {(r["shape"], r["dtype"], r["system"], r["mode"]): r for r in rows}
    out = {}
    for r in rows:
        if (r["system"], r["mode"]) != (SYSTEM, "primal"):
            continue
        cell = (r["shape"], r["dtype"])

        def time(system, mode, cell=cell):
            row = index.get((*cell, system, mode))
            return row["median_s"] if row else np.nan

        def error(system, cell=cell):
            row = index.get((*cell, system, "primal"))
            return row.get("max_rel_error_refined", np.nan) if row else np.nan

        out[r["case"], *cell] = {
            "primal / jnp": time(SYSTEM, "primal") / time(BASELINE, "primal"),
            "vag / jnp": time(SYSTEM, "value_and_grad") / time(BASELINE, "value_and_grad"),
            "vag / own primal": time(SYSTEM, "value_and_grad") / time(SYSTEM, "primal"),
            "primal / torch gels": time(SYSTEM, "primal") / time(TORCH, "primal"),
            "error / jnp's": error(SYSTEM) / error(BASELINE),
        }
    return out


def table(runs: list[dict]) -> str:
    columns = list(next(iter(runs[0].values())))
    lines = [
        "| case | dtype | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for key in runs[0]:
        case, shape, dtype = key
        cells = []
        for column in columns:
            values = [run[key][column] for run in runs if key in run]
            each = ", ".join(figure(v) for v in values)
            cells.append(f"{each}: **{figure(np.median(values))}**" if len(values) > 1 else each)
        lines.append(f"| {case} {shape} | {dtype} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(value: float) -> str:
    """Two decimals, or two significant digits below 0.01 (a GPU batch's 1e-4 of jnp)."""
    return f"{value:.2f}" if abs(value) >= 0.01 else f"{value:.1e}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    runs = [ratios(json.loads((d / "results.json").read_text())["rows"]) for d in args.dirs]
    print(table(runs))


if __name__ == "__main__":
    main()
