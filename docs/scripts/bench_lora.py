"""Full fine-tuning against LoRA at ALBERT-large and -xlarge shapes: step time and peak memory.

    python docs/scripts/bench_lora.py [--shapes albert_large albert_xlarge] [--rank 8]
        [--batch-size 2] [--sequence-length 32] [--steps 3]

Each (shape, mode) runs in a subprocess of its own, so each peak RSS is one model's: the
child composes `conf/train.yaml` as albert-train does (`model=<shape> model.lora_rank=<rank or
null>`), builds the app's classifier (vocabulary of 30,000, ALBERT's) and compiles it with the
app's optimizer (app.tasks.base.compile_for_training, where LoRA is enabled), then trains on
random token batches: one untimed step (tracing, optimizer slots), then `--steps` timed ones.
Prints one row per child: trainable and total parameters, median seconds per step, peak RSS
(the child's `getrusage(RUSAGE_SELF).ru_maxrss` at its end) and how much of it came after the
imports (the model, its gradients, optimizer slots and activations).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VOCABULARY_SIZE = 30000  # ALBERT's SentencePiece vocabulary
REPO = Path(__file__).resolve().parents[2]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(shape: str, rank: int | None, batch_size: int, sequence_length: int,
          steps: int) -> dict:
    """Build, compile and time one model in this process (the subprocess's side)."""
    from app.runtime.cpu import tune_cpu

    tune_cpu()  # as albert-train does, before TensorFlow starts
    import numpy as np
    from hydra import compose, initialize_config_module

    from app.config.schema import register_configs
    from app.data.task import TaskSpec
    from app.models.classifier import build_task_model, task_loss
    from app.tasks.base import compile_for_training
    from app.training.session import start_session

    register_configs()
    with initialize_config_module("app.conf", version_base="1.3"):
        cfg = compose("train", overrides=[
            f"model={shape}", f"model.lora_rank={'null' if rank is None else rank}",
            f"data.sequence_length={sequence_length}", f"trainer.batch_size={batch_size}"])
    start_session(cfg)
    before = peak_rss_mib()  # Python, TensorFlow and Keras, before any model
    task = TaskSpec("classification", ("negative", "positive"))
    model = build_task_model(cfg.model, task, VOCABULARY_SIZE)
    compile_for_training(model, cfg, steps_per_epoch=steps + 1, loss=task_loss(task))
    rng = np.random.default_rng(0)
    size = (batch_size, sequence_length)
    features = {"token_ids": rng.integers(5, VOCABULARY_SIZE, size).astype("int32"),
                "segment_ids": np.zeros(size, "int32"),
                "padding_mask": np.ones(size, bool)}
    labels = rng.integers(0, 2, batch_size)
    model.train_on_batch(features, labels)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(features, labels)
        seconds.append(time.perf_counter() - started)
    return {"trainable": sum(int(np.prod(v.shape)) for v in model.trainable_weights),
            "total": model.count_params(), "step_seconds": statistics.median(seconds),
            "peak_rss_mib": peak_rss_mib(), "model_rss_mib": peak_rss_mib() - before}


def run_child(args, shape: str, rank: int | None) -> dict:
    """One (shape, mode) in a fresh Python process; its JSON result."""
    command = [sys.executable, __file__, "--child", shape, "--rank", str(rank or 0),
               "--batch-size", str(args.batch_size),
               "--sequence-length", str(args.sequence_length), "--steps", str(args.steps)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{shape} rank={rank}: failed\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["albert_large", "albert_xlarge"])
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (0 in --child: full)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", metavar="SHAPE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rank or None, args.batch_size,
                               args.sequence_length, args.steps)))
        return
    print(f"batch {args.batch_size} x {args.sequence_length} tokens, median of {args.steps} "
          f"steps after one untimed step")
    print(f"{'shape':<14} {'mode':<12} {'trainable':>12} {'of total':>12} {'share':>7} "
          f"{'s/step':>7} {'peak RSS MiB':>13} {'above start':>12}")
    for shape in args.shapes:
        for rank in (None, args.rank):
            row = run_child(args, shape, rank)
            mode = "full" if rank is None else f"LoRA r={rank}"
            print(f"{shape:<14} {mode:<12} {row['trainable']:>12,} {row['total']:>12,} "
                  f"{100 * row['trainable'] / row['total']:>6.2f}% {row['step_seconds']:>7.2f} "
                  f"{row['peak_rss_mib']:>13,.0f} {row['model_rss_mib']:>12,.0f}", flush=True)


if __name__ == "__main__":
    main()
