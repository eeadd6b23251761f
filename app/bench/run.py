"""The bench itself: build the app's job with its own steps, time it against the bare loop.

Reports training throughput after warm-up (median of timed windows) of the app's `model.fit`
with its per-batch callbacks and of a bare keras-hub model on pre-made random batches of the
same shapes; model FLOPs per step and MFU against a matmul peak measured in this run; the input
pipeline alone; start-up to the first step; peak resident memory.
"""

import logging
import os
import resource
import time
from datetime import datetime
from pathlib import Path

import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from app.bench.bare import bare_model, random_batches
from app.bench.timing import iterate, matmul_peak, time_windows, warm_up
from app.config.instantiate import check_config
from app.config.validate import validate
from app.data import synthetic
from app.models.flops import albert_flops
from app.runs.layout import RunLayout
from app.runs.record import write_json
from app.runtime.strategy import build_strategy
from app.tasks import task_for
from app.training.callbacks import ProgressLog
from app.training.checkpoints import StepCheckpoint
from app.training.session import start_session

log = logging.getLogger(__name__)


def with_data(cfg: DictConfig, scratch: Path) -> DictConfig:
    """The config, pointed at synthetic data in `scratch` when its data folder does not exist."""
    if Path(cfg.data.dir).is_dir():
        return cfg
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out = scratch / "data"
    if cfg.data.task == "pretraining":
        rows = synthetic.sentiment_rows(3000, seed=1)
        documents = ["\n".join(row[0] for row in rows[i:i + 6]) for i in range(0, len(rows), 6)]
        out.mkdir(parents=True, exist_ok=True)
        (out / "corpus.txt").write_text("\n\n".join(documents) + "\n", encoding="utf-8")
        cfg.data.update(train_file="corpus.txt", eval_file=None, document_pattern=None,
                        skip_pattern=None)
    else:
        synthetic.write_sample(out)
        cfg.data.update(format="tsv", train_file="train.tsv", eval_file="dev.tsv",
                        text_column="sentence", text_pair_column=None, label_column="label")
    log.warning("No data at %s: benchmarking on synthetic data in %s", cfg.data.dir, out)
    cfg.data.dir = str(out)
    return cfg


def time_pipeline(cfg: DictConfig, run: RunLayout, scratch: RunLayout) -> dict:
    """The input pipeline alone, built anew by the task's own steps with the run's tokenizer: a
    first epoch (reads, tokenizes, packs, masks, fills the cache), then a second one (from the
    cache: masking only, no tokenizing)."""
    cfg = OmegaConf.merge(cfg, {"tokenizer": {"proto": str(run.proto)}})
    task = task_for(cfg)
    task.read_data(scratch)
    task.build_tokenizer(scratch)
    started = time.perf_counter()
    data = task.build_pipelines()  # pretraining: reads, tokenizes and packs the corpus here
    read_seconds = time.perf_counter() - started
    steps = data.steps_per_epoch
    first, examples = iterate(data.batches(0), steps)
    second, _ = iterate(data.batches(steps), steps)
    return {
        "examples": examples,
        "read_seconds": read_seconds,
        "first_epoch_seconds": first,
        "cached_epoch_seconds": second,
        "first_pass_examples_per_second": examples / (read_seconds + first),
        "cached_examples_per_second": examples / second,
    }


def flops_per_step(cfg: DictConfig, vocabulary_size: int, num_outputs: int) -> int:
    """Training FLOPs of one global batch (app.models.flops)."""
    pretraining = cfg.data.task == "pretraining"
    count = albert_flops(cfg.model, cfg.data.sequence_length, num_outputs=num_outputs,
                         vocabulary_size=vocabulary_size,
                         mask_positions=cfg.data.max_predictions if pretraining else 0)
    return count.training * cfg.trainer.batch_size


def _throughput(timing: dict, cfg: DictConfig, step_flops: int, peak: float) -> dict:
    examples = cfg.trainer.batch_size / timing["step_seconds"]
    return {
        **timing,
        "examples_per_second": examples,
        "tokens_per_second": examples * cfg.data.sequence_length,
        "flops_per_second": step_flops / timing["step_seconds"],
        "mfu": step_flops / timing["step_seconds"] / peak,
    }


def run_bench(cfg: DictConfig) -> dict:
    """Build the app's job, time it, the pipeline and a bare loop; return the report.

    Args:
        cfg: the composed `conf/bench.yaml` (a training config plus `bench.*`).
    """
    options = cfg.bench
    out = Path(options.out or Path(cfg.paths.output_dir) / "bench"
               / f"{datetime.now():%Y-%m-%d_%H-%M-%S}")
    run = RunLayout(out / "run")
    run.root.mkdir(parents=True, exist_ok=True)
    cfg = with_data(cfg, out)
    validate(cfg)
    check_config(cfg)
    pretraining = cfg.data.task == "pretraining"
    # The first steps of albert-train's flow (app.train), with the same calls.
    strategy = build_strategy(cfg.strategy)
    start_session(cfg)
    started = time.perf_counter()
    task = task_for(cfg)
    task.read_data(run)
    task.build_tokenizer(run)
    data = task.build_pipelines()
    with strategy.scope():
        model = task.build_model()
    job_seconds = time.perf_counter() - started
    vocabulary_size = model.backbone.vocabulary_size
    num_outputs = 2 if pretraining else int(model.num_classes)
    spe = cfg.trainer.steps_per_execution
    app_callbacks = [
        ProgressLog(cfg.trainer.batch_size, data.steps_per_epoch, cfg.trainer.epochs,
                    cfg.trainer.log_every_n_steps, bar=False),
        StepCheckpoint(run.states, cfg.trainer.checkpoint_every_n_steps,
                       cfg.trainer.checkpoint_every_minutes, cfg.trainer.keep_checkpoints, 0,
                       data.steps_per_epoch),
    ]
    log.info("Timing the app's fit (%s)", type(model).__name__)
    # The warm-up fit starts right after the build, as in albert-train: it measures start-up.
    step_seconds, startup = warm_up(model, data.batches(0).repeat(), spe, options,
                                    app_callbacks, first_step=True)
    log.info("Timing the input pipeline alone")
    pipeline = time_pipeline(cfg, run, RunLayout(out / "pipeline"))
    log.info("Timing the app's fit")
    app_timing = time_windows(model, data.batches(0).repeat(), step_seconds, spe, options,
                              app_callbacks)

    log.info("Timing a bare keras-hub loop on pre-made batches")
    bare = bare_model(cfg, vocabulary_size, num_outputs, pretraining)
    batches = random_batches(cfg, vocabulary_size, num_outputs, pretraining)
    step_seconds, _ = warm_up(bare, batches, spe, options)
    bare_timing = time_windows(bare, batches, step_seconds, spe, options)

    log.info("Measuring the float32 matmul peak")
    size, seconds = options.matmul_size, options.matmul_seconds
    peaks = {"float32": matmul_peak(size, seconds=seconds)}
    if tf.config.list_physical_devices("GPU"):
        peaks["gpu_float32"] = matmul_peak(size * 4, tf.float32, "/gpu:0", seconds)
        peaks["gpu_bfloat16"] = matmul_peak(size * 4, tf.bfloat16, "/gpu:0", seconds)
    peak = peaks["gpu_bfloat16" if "gpu_bfloat16" in peaks else "float32"]
    step_flops = flops_per_step(cfg, vocabulary_size, num_outputs)
    app = _throughput(app_timing, cfg, step_flops, peak)
    bare_result = _throughput(bare_timing, cfg, step_flops, peak)
    report = {
        "config": {
            "model": OmegaConf.to_container(cfg.model), "data": cfg.data.name,
            "task": cfg.data.task, "batch_size": cfg.trainer.batch_size,
            "sequence_length": cfg.data.sequence_length,
            "jit_compile": cfg.trainer.jit_compile, "steps_per_execution": spe,
            "precision": cfg.trainer.precision, "vocabulary_size": vocabulary_size,
        },
        "app": app,
        "bare_keras_hub": bare_result,
        "app_over_bare": app["examples_per_second"] / bare_result["examples_per_second"],
        "flops_per_step": step_flops,
        "matmul_peak_flops_per_second": peaks,
        "pipeline": {**pipeline, "over_model": pipeline["first_pass_examples_per_second"]
                     / app["examples_per_second"]},
        "job_build_seconds": job_seconds,
        "startup_to_first_step_seconds": startup,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_count": os.cpu_count(),
        "run_dir": str(run.root),
    }
    write_json(out / "bench.json", report)
    return report


def table(report: dict) -> str:
    """The report as a plain-text table."""
    app, bare, pipe = report["app"], report["bare_keras_hub"], report["pipeline"]
    config = report["config"]
    model = config["model"]
    rows = [
        ("model", f"L={model['num_layers']} H={model['hidden_dim']} E={model['embedding_dim']} "
                  f"I={model['intermediate_dim']} ({config['task']}, {config['data']})"),
        ("batch x length", f"{config['batch_size']} x {config['sequence_length']}, jit "
                           f"{config['jit_compile']}, steps/exec {config['steps_per_execution']}"),
        ("app examples/s", f"{app['examples_per_second']:.1f} "
                           f"({app['tokens_per_second']:.0f} tokens/s)"),
        ("bare keras-hub examples/s", f"{bare['examples_per_second']:.1f} "
                                      f"({bare['tokens_per_second']:.0f} tokens/s)"),
        ("app / bare", f"{report['app_over_bare']:.3f}"),
        ("FLOPs per step", f"{report['flops_per_step'] / 1e9:.2f} GFLOP"),
        ("matmul peak", ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s"
                                  for k, v in report["matmul_peak_flops_per_second"].items())),
        ("MFU app / bare", f"{app['mfu']:.1%} / {bare['mfu']:.1%}"),
        ("pipeline first pass", f"{pipe['first_pass_examples_per_second']:.0f} examples/s "
                                f"({pipe['over_model']:.1f}x the model)"),
        ("pipeline cached epoch", f"{pipe['cached_examples_per_second']:.0f} examples/s"),
        ("start to first step", f"{report['startup_to_first_step_seconds']:.1f} s"),
        ("peak RSS", f"{report['peak_rss_mb']:.0f} MB"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
