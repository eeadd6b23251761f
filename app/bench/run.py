"""The training bench: build the app's job with its own steps, time it against a bare loop.

Times, in interleaved windows (app, bare, matmul peak, app, bare, ...: all under the same
load), the app's `model.fit` with its per-batch callbacks and a bare keras-hub model fed the
very batches the app's window ran (same shapes, lengths and contents, from memory); reports
each measure as min / median / max over the windows: examples/s, tokens/s and MFU, counting
padded tokens (the compute spent) and real ones (bucket-cut, unpadded). Also the input pipeline
alone, start-up to the first step and peak resident memory.
"""

import logging
import os
import resource
import statistics
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from app.bench.bare import BatchStats, bare_model, for_bare, in_memory, take_batches
from app.bench.timing import (
    BetweenWindows,
    StartupPhases,
    WindowTimer,
    iterate,
    matmul_peak,
    spread,
    warm_up,
    window_steps,
)
from app.config.instantiate import check_config
from app.config.validate import validate
from app.data import synthetic
from app.models.flops import architecture
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
    # Pretraining: reads, tokenizes and packs the corpus here.
    data = task.build_pipelines(tf.distribute.get_strategy())
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


def flops_arguments(model, pretraining: bool, cfg: DictConfig) -> dict:
    """What `batch_flops` needs besides the batch, read from the built model."""
    return {
        "model": architecture(model.backbone),
        "num_outputs": 2 if pretraining else int(model.num_classes),
        "vocabulary_size": model.backbone.vocabulary_size,
        "mask_positions": cfg.data.max_predictions if pretraining else 0,
    }


def window_rates(seconds: float, stats: BatchStats, peak: float) -> dict:
    """One timed window's throughput: examples and tokens per second, FLOP/s and MFU, padded
    (compute spent) and real (unpadded tokens only)."""
    return {
        "seconds": seconds,
        "examples_per_second": stats.examples / seconds,
        "padded_tokens_per_second": stats.padded_tokens / seconds,
        "real_tokens_per_second": stats.real_tokens / seconds,
        "padded_flops_per_second": stats.padded_flops / seconds,
        "real_flops_per_second": stats.real_flops / seconds,
        "padded_mfu": stats.padded_flops / seconds / peak,
        "real_mfu": stats.real_flops / seconds / peak,
    }


def summarize(windows: list[dict]) -> dict:
    """min / median / max over windows of every measure of `window_rates`."""
    return {key: spread([w[key] for w in windows]) for key in windows[0]}


def prepare(cfg: DictConfig):
    """The bench folder, the config (on synthetic data where needed) and the app's job, built
    by the first steps of albert-train's flow (app.train) with the same calls."""
    options = cfg.bench
    out = Path(options.out or Path(cfg.paths.output_dir) / "bench"
               / f"{datetime.now():%Y-%m-%d_%H-%M-%S}")
    run = RunLayout(out / "run")
    run.root.mkdir(parents=True, exist_ok=True)
    cfg = with_data(cfg, out)
    phases = StartupPhases()
    validate(cfg)
    check_config(cfg)
    strategy = build_strategy(cfg.strategy)
    start_session(cfg)
    phases.done("strategy_and_session")
    task = task_for(cfg)
    task.read_data(run)
    phases.done("data_read")
    task.build_tokenizer(run)
    phases.done("tokenizer")
    data = task.build_pipelines(strategy)
    phases.done("pipelines")
    with strategy.scope():
        model = task.build_model()
    phases.done("model_build")
    return out, run, cfg, strategy, task, data, model, phases


def bench_training(cfg: DictConfig) -> dict:
    """Build the app's job, time it against a bare loop on the same batches, and a matmul
    peak, in interleaved windows; time the pipeline alone; return the report.

    Args:
        cfg: the composed `conf/bench.yaml` (a training config plus `bench.*`).
    """
    out, run, cfg, strategy, task, data, model, phases = prepare(cfg)
    options = cfg.bench
    pretraining = cfg.data.task == "pretraining"
    flops_args = flops_arguments(model, pretraining, cfg)
    spe = cfg.trainer.steps_per_execution

    def app_callbacks(steps_per_epoch: int, epochs: int) -> list:
        """The per-step callbacks of albert-train, their progress counted in the bench's
        own epochs (its windows)."""
        return [ProgressLog(cfg.trainer.batch_size, steps_per_epoch, epochs,
                            cfg.trainer.log_every_n_steps, bar=False),
                StepCheckpoint(run.states, cfg.trainer.checkpoint_every_n_steps,
                               cfg.trainer.checkpoint_every_minutes,
                               cfg.trainer.keep_checkpoints, 0, steps_per_epoch)]

    log.info("Warming up the app's fit (%s)", type(model).__name__)
    # The warm-up fit starts right after the build, as in albert-train: it measures start-up.
    step_seconds, startup = warm_up(model, data.batches(0).repeat(), spe, options,
                                    app_callbacks(options.min_window_steps * spe, 2),
                                    first_step=True)
    log.info("Timing the input pipeline alone")
    pipeline = time_pipeline(cfg, run, RunLayout(out / "pipeline"))

    log.info("Warming up a bare keras-hub loop on the app's batches")
    spec = for_bare(data.batches(0).element_spec, pretraining)
    with strategy.scope():
        bare = bare_model(cfg, model.backbone, flops_args["num_outputs"], pretraining)
    probe, _ = take_batches(iter(data.batches(0)), 2 * options.min_window_steps * spe, flops_args)
    warm_up(bare, in_memory([for_bare(b, pretraining) for b in probe], spec), spe, options)

    steps = window_steps(step_seconds, spe, options)
    # MFU is against the peak of the matmuls the model runs: on its device (a GPU's needs larger
    # matrices to reach it), in its compute dtype (bfloat16 under mixed_bfloat16).
    compute_dtype = tf.as_dtype(model.backbone.compute_dtype)
    on_gpu = "GPU" in strategy.extended.worker_devices[0].upper()
    peak_args = (options.matmul_size * (4 if on_gpu else 1), compute_dtype,
                 "/gpu:0" if on_gpu else "/cpu:0", options.matmul_seconds)
    # A second iterator over the app's stream, in step with the app's fit: after each app
    # window it yields that window's batches, which the bare loop then runs from memory.
    shadow = iter(data.batches(0).repeat())
    windows = {"app": [], "bare": [], "peak": [], "stats": []}
    timer = WindowTimer()

    def between(epoch: int) -> None:
        batches, stats = take_batches(shadow, steps, flops_args)
        if epoch == 0:
            return  # the untimed first window (retraces, pipeline start)
        windows["app"].append(timer.seconds[-1])
        windows["stats"].append(stats)
        bare_timer = WindowTimer(from_first_batch=True)
        bare.fit(in_memory([for_bare(b, pretraining) for b in batches], spec), epochs=1,
                 steps_per_epoch=steps, callbacks=[bare_timer], shuffle=False, verbose=0)
        windows["bare"].append(bare_timer.seconds[-1])
        windows["peak"].append(matmul_peak(*peak_args))

    log.info("Timing %d interleaved windows (app, bare, matmul peak) of %d steps",
             options.windows, steps)
    model.fit(data.batches(0).repeat(), epochs=options.windows + 1, steps_per_epoch=steps,
              callbacks=[timer, *app_callbacks(steps, options.windows + 1),
                         BetweenWindows(between)], shuffle=False,
              verbose=0)
    app = [window_rates(s, st, p) for s, st, p in
           zip(windows["app"], windows["stats"], windows["peak"], strict=True)]
    bare_rates = [window_rates(s, st, p) for s, st, p in
                  zip(windows["bare"], windows["stats"], windows["peak"], strict=True)]
    ratios = [a / b for a, b in zip(windows["bare"], windows["app"], strict=True)]
    peaks = {("gpu_" if on_gpu else "") + compute_dtype.name: spread(windows["peak"])}
    total = windows["stats"][0]
    report = {
        "config": {
            "model": architecture(model.backbone), "preset": cfg.model.preset,
            "data": cfg.data.name, "task": cfg.data.task,
            "batch_size": cfg.trainer.batch_size, "sequence_length": cfg.data.sequence_length,
            "padding": cfg.data.get("padding"),
            "bucket_boundaries": (OmegaConf.to_container(cfg.data.bucket_boundaries)
                                  if cfg.data.get("bucket_boundaries") else None),
            "jit_compile": cfg.trainer.jit_compile, "steps_per_execution": spe,
            "precision": cfg.trainer.precision,
            "vocabulary_size": flops_args["vocabulary_size"],
        },
        "window_steps": steps,
        "windows": options.windows,
        "app": summarize(app),
        "bare_keras_hub": summarize(bare_rates),
        # Same batches in both loops: the ratio of their speeds is that of their times.
        "app_over_bare": spread(ratios),
        "window_seconds": {"app": windows["app"], "bare": windows["bare"]},
        "first_window_batches": asdict(total),
        # A whole epoch of the app's training batches (fine-tuning): real / padded tokens.
        "padding": task.extra_metrics.get("padding"),
        "matmul_peak_flops_per_second": peaks,
        "pipeline": {**pipeline, "over_model": pipeline["first_pass_examples_per_second"]
                     / statistics.median(a["examples_per_second"] for a in app)},
        "startup_to_first_step_seconds": startup,
        # Where the start-up goes: imports, data, tokenizer, pipelines, model, first step.
        "startup_seconds": phases.until_first_step(startup),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_count": os.cpu_count(),
        "run_dir": str(run.root),
    }
    write_json(out / "bench.json", report)
    return report


def spread_text(value: dict, fmt: str = "{:.1f}") -> str:
    """`median (min-max)` of a spread."""
    return (f"{fmt.format(value['median'])} ({fmt.format(value['min'])}-"
            f"{fmt.format(value['max'])})")


def table(report: dict) -> str:
    """The training report as a plain-text table (medians, with min-max over the windows)."""
    app, bare, pipe = report["app"], report["bare_keras_hub"], report["pipeline"]
    config = report["config"]
    model = config["model"]
    first = report["first_window_batches"]
    rows = [
        ("model", f"L={model['num_layers']} H={model['hidden_dim']} E={model['embedding_dim']} "
                  f"I={model['intermediate_dim']} ({config['task']}, {config['data']})"),
        ("batch x length", f"{config['batch_size']} x {config['sequence_length']}, padding "
                           f"{config['padding']} {config['bucket_boundaries'] or ''}, "
                           f"jit {config['jit_compile']}, "
                           f"steps/exec {config['steps_per_execution']}"),
        ("windows", f"{report['windows']} x {report['window_steps']} steps, interleaved "
                    f"(app, bare, matmul peak); real/padded tokens "
                    f"{first['real_tokens'] / first['padded_tokens']:.2f}"),
        ("real/padded tokens, epoch", "not measured (pretraining)" if not report["padding"] else
         f"{report['padding']['ratio']:.2f} ({report['padding']['real_tokens']} of "
         f"{report['padding']['padded_tokens']})"),
        ("app examples/s", spread_text(app["examples_per_second"])),
        ("bare keras-hub examples/s", spread_text(bare["examples_per_second"])),
        ("app / bare", spread_text(report["app_over_bare"], "{:.3f}")),
        ("app tokens/s real / padded", f"{spread_text(app['real_tokens_per_second'], '{:.0f}')}"
                                       f" / {app['padded_tokens_per_second']['median']:.0f}"),
        ("bare tokens/s real / padded",
         f"{spread_text(bare['real_tokens_per_second'], '{:.0f}')}"
         f" / {bare['padded_tokens_per_second']['median']:.0f}"),
        ("matmul peak GFLOP/s", ", ".join(
            f"{k} {spread_text({n: v / 1e9 for n, v in s.items()})}"
            for k, s in report["matmul_peak_flops_per_second"].items())),
        ("app MFU padded / real", f"{spread_text(app['padded_mfu'], '{:.1%}')} / "
                                  f"{app['real_mfu']['median']:.1%}"),
        ("bare MFU padded / real", f"{spread_text(bare['padded_mfu'], '{:.1%}')} / "
                                   f"{bare['real_mfu']['median']:.1%}"),
        ("pipeline first pass", f"{pipe['first_pass_examples_per_second']:.0f} examples/s "
                                f"({pipe['over_model']:.1f}x the model)"),
        ("pipeline cached epoch", f"{pipe['cached_examples_per_second']:.0f} examples/s"),
        ("start to first step", f"{report['startup_to_first_step_seconds']:.1f} s"),
        ("peak RSS", f"{report['peak_rss_mb']:.0f} MB"),
    ]
    return format_rows(rows)


def format_rows(rows: list[tuple[str, str]]) -> str:
    """Aligned `name  value` lines."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
