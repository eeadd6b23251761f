"""Training examples/s of one process against 2 worker processes on 127.0.0.1
(MultiWorkerMirroredStrategy from TF_CONFIG), on the same global batch and the cores split
evenly: the process gets cores 0-1 and thread pools of 2, each worker one core and pools of 1.

    python docs/scripts/scale_workers.py [rounds] [albert-train overrides ...]

The rate is the steady state of the last epoch, from the chief's progress lines in train.log
(no tracing, no evaluation). Each round runs the two layouts back to back (on a shared machine
the load drifts between rounds); prints each, the round's ratio and the median ratio.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from app.data import synthetic

REPO = Path(__file__).resolve().parents[2]
BATCH, EPOCHS = 32, 2
SETTINGS = ["model=albert_small", "data.sequence_length=64", f"trainer.batch_size={BATCH}",
            f"trainer.epochs={EPOCHS}", "trainer.log_every_n_steps=8", "logger=none"]
LINE = re.compile(rf"^\[([\d\- :,]+)\].* epoch {EPOCHS}/{EPOCHS} step (\d+)/")


def steady_rate(log: Path) -> float:
    """Examples/s between the first and the last progress line of the last epoch."""
    points = [(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f"), int(m[2]))
              for m in map(LINE.match, log.read_text().splitlines()) if m]
    (start, first), (end, last) = points[0], points[-1]
    return (last - first) * BATCH / (end - start).total_seconds()


def run(out: Path, args: list[str], workers: int) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # and port + 1 (free in practice)
    cluster = {"worker": [f"127.0.0.1:{port + i}" for i in range(workers)]}
    threads = str(2 // workers)
    processes = []
    for index in range(workers):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": threads,
               "TF_NUM_INTEROP_THREADS": threads}
        strategy = ["strategy=cpu"]
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                           "task": {"type": "worker", "index": index}})
            strategy = ["strategy=multi_worker"]
        cores = "0,1" if workers == 1 else str(index)
        processes.append(subprocess.Popen(
            ["taskset", "-c", cores, sys.executable, "-m", "app", *SETTINGS, *args, *strategy,
             f"hydra.run.dir={out}/worker{index}"], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    for process in processes:
        assert process.wait() == 0, f"a run in {out} failed"
    return steady_rate(out / "worker0" / "train.log")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    args = sys.argv[2:]
    root = Path(tempfile.mkdtemp(prefix="scale-workers-"))
    data = root / "data"
    synthetic.write_tsv(data / "train.tsv", ("sentence", "label"),
                        synthetic.sentiment_rows(40 * BATCH, seed=1))
    synthetic.write_tsv(data / "dev.tsv", ("sentence", "label"),
                        synthetic.sentiment_rows(64, seed=2))
    args = ["data=tsv", f"data.dir={data}", *args]
    ratios = []
    for round_ in range(rounds):
        one, two = (run(root / f"round{round_}-{workers}", args, workers) for workers in (1, 2))
        ratios.append(two / one)
        print(f"round {round_ + 1}: 1 process {one:.1f}, 2 workers {two:.1f} examples/s; "
              f"2 / 1 = {ratios[-1]:.2f}", flush=True)
    print(f"median 2 / 1 over {rounds} round(s): {sorted(ratios)[len(ratios) // 2]:.2f}")


if __name__ == "__main__":
    main()
