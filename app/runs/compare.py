"""Compare runs: a table of every run under a folder, a CSV and a PNG (no TensorFlow).

The table has one row per run folder: the overrides that differ between runs, the final
metrics, the status (with the error of a failed run) and the wall time; `*` marks the best run
by its optimized metric (one per data set and metric, in a tree of different experiments). The
PNG plots the optimized metric against each swept hyperparameter, and the validation curve of
the optimized metric of every run.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from app.errors import ConfigError
from app.runs.read import Run, find_runs


@dataclass
class Row:
    """One run's line of the report."""

    run: Run
    job: str
    params: dict[str, str]
    best: bool = False

    @property
    def optimized(self) -> dict | None:
        """`{"name", "value", "direction"}` of a completed run with a finite value."""
        metrics = self.run.metrics or {}
        optimized = metrics.get("optimized_metric")
        if self.run.state != "completed" or not optimized:
            return None
        value = optimized.get("value")
        return optimized if isinstance(value, int | float) and math.isfinite(value) else None


def _override_dict(overrides: list[str]) -> dict[str, str]:
    params = {}
    for override in overrides:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    return params


def build_rows(root: Path, runs: list[Run]) -> tuple[list[Row], list[str]]:
    """Rows with their differing overrides, best runs marked; also the differing keys."""
    rows = []
    for run in runs:
        job = run.path.relative_to(root).as_posix() if run.path != root else "."
        rows.append(Row(run=run, job=job, params=_override_dict(run.overrides)))
    keys = sorted({key for row in rows for key in row.params})
    swept = [key for key in keys if len({row.params.get(key) for row in rows}) > 1]
    _mark_best(rows)
    return rows, swept


def _mark_best(rows: list[Row]) -> None:
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.optimized:
            data = OmegaConf.select(row.run.config, "data.name", default="") \
                if row.run.config is not None else ""
            key = (data, row.optimized["name"], row.optimized["direction"])
            groups.setdefault(key, []).append(row)
    for (_, _, direction), members in groups.items():
        pick = max if direction == "maximize" else min
        pick(members, key=lambda r: r.optimized["value"]).best = True


def metric_names(rows: list[Row]) -> list[str]:
    """Final metric names of all runs, the optimized ones first."""
    names = {name for row in rows for name in ((row.run.metrics or {}).get("final") or {})}
    optimized = sorted({row.optimized["name"] for row in rows if row.optimized})
    return optimized + sorted(names - set(optimized))


def table(rows: list[Row], swept: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the report (numbers formatted, errors shortened)."""
    metrics = metric_names(rows)
    header = ["best", "job", *swept, *metrics, "status", "wall_s", "error"]
    cells = []
    for row in rows:
        final = (row.run.metrics or {}).get("final") or {}
        wall = (row.run.metrics or {}).get("wall_seconds")
        error = row.run.status.get("error", "")
        cells.append([
            "*" if row.best else "",
            row.job,
            *(_short(row.params.get(key, "")) for key in swept),
            *(f"{final[m]:.4f}" if m in final else "" for m in metrics),
            row.run.state,
            f"{wall:.1f}" if wall is not None else "",
            error if len(error) <= 80 else error[:77] + "...",
        ])
    return header, cells


def _short(value: str) -> str:
    """A swept value for the text table: floats to 4 significant digits (the CSV keeps all)."""
    number = _as_number(value)
    if number is None or value.lstrip("-").isdigit():
        return value
    return f"{number:.4g}"


def format_table(header: list[str], cells: list[list[str]]) -> str:
    """Left-aligned text columns; an empty `error` column is left out."""
    if not any(row[-1] for row in cells):
        header, cells = header[:-1], [row[:-1] for row in cells]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *cells, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, *cells]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def write_csv(path: Path, rows: list[Row], swept: list[str]) -> None:
    """The table with full-precision metrics and full errors."""
    metrics = metric_names(rows)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["best", "job", *swept, *metrics, "status", "wall_seconds", "error",
                         "path"])
        for row in rows:
            final = (row.run.metrics or {}).get("final") or {}
            writer.writerow([
                int(row.best), row.job, *(row.params.get(k, "") for k in swept),
                *(final.get(m, "") for m in metrics), row.run.state,
                (row.run.metrics or {}).get("wall_seconds", ""),
                row.run.status.get("error", ""), str(row.run.path),
            ])


def _as_number(value: str):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot(path: Path, rows: list[Row], swept: list[str]) -> None:
    """Optimized metric against each swept hyperparameter, and every run's validation curve."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    done = [row for row in rows if row.optimized]
    panels = len(swept) + 1
    figure, axes = pyplot.subplots(1, panels, figsize=(4.5 * panels, 3.8), squeeze=False)
    axes = axes[0]
    name = done[0].optimized["name"] if done else "optimized metric"
    for axis, key in zip(axes, swept, strict=False):
        values = [row.params.get(key, "") for row in done]
        numbers = [_as_number(v) for v in values]
        if all(n is not None for n in numbers) and numbers:
            x = numbers
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
                axis.set_xscale("log")
        else:
            categories = sorted(set(values))
            x = [categories.index(v) for v in values]
            axis.set_xticks(range(len(categories)), categories, rotation=30)
        y = [row.optimized["value"] for row in done]
        axis.scatter(x, y, c=["tab:red" if row.best else "tab:blue" for row in done])
        axis.set_xlabel(key)
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    curves = axes[-1]
    for row in done:
        history = (row.run.metrics or {}).get("history", {}).get(row.optimized["name"], [])
        curves.plot(range(1, len(history) + 1), history, marker="o",
                    label=row.job + (" *" if row.best else ""))
    curves.set_xlabel("epoch")
    curves.set_ylabel(name)
    curves.set_title("validation curves")
    curves.grid(alpha=0.3)
    if done:
        curves.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def report(root: str | Path, csv_path: str | Path | None = None,
           png_path: str | Path | None = None, draw: bool = True) -> tuple[list[Row], str]:
    """Find every run under `root`, write the CSV (and PNG) and return the rows and text table.

    Args:
        root: a run folder, a sweep folder or a whole experiments tree.
        csv_path: default `<root>/report.csv`.
        png_path: default `<root>/report.png`.
        draw: write the PNG.
    """
    root = Path(root)
    runs = find_runs(root)
    if not runs:
        raise ConfigError(f"no run folders (with status.json) under '{root}'; expected a run, "
                          f"a sweep folder (experiments/<name>/multirun/<timestamp>) or "
                          f"an experiments tree")
    rows, swept = build_rows(root, runs)
    header, cells = table(rows, swept)
    text = format_table(header, cells)
    write_csv(Path(csv_path or root / "report.csv"), rows, swept)
    if draw:
        plot(Path(png_path or root / "report.png"), rows, swept)
    return rows, text
