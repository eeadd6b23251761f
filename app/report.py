"""`albert-report`: compare runs in one table, with a CSV and a PNG.

    albert-report input=experiments/<name>/multirun/<timestamp>     # one sweep
    albert-report input=experiments                                 # every run
    albert-report input=<dir> csv=table.csv png=plot.png plot=false
"""

from pathlib import Path

from app.runs.compare import report
from app.runtime.console import command


@command("report")
def main(cfg) -> None:
    """`albert-report input=<dir> [csv=<file>] [png=<file>] [plot=false]`."""
    root = Path(cfg.input)
    rows, text = report(root, cfg.csv, cfg.png, cfg.plot)
    counts = {state: sum(r.run.state == state for r in rows) for state in
              ("completed", "failed", "preempted", "interrupted", "running")}
    # The table itself is the product, so it goes to stdout.
    print(text)
    print(f"\n{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f"; * = best by the optimized metric. CSV: {cfg.csv or root / 'report.csv'}"
          + (f", PNG: {cfg.png or root / 'report.png'}" if cfg.plot else ""), flush=True)


if __name__ == "__main__":
    main()
