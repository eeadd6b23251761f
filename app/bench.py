"""Benchmark the app's training step against bare keras-hub: `python -m app.bench [overrides]`.

    python -m app.bench model=albert_base trainer.batch_size=8 data.sequence_length=128
    python -m app.bench experiment=pretrain_wikitext2 paths.data_dir=../shared/data \
        data.max_train_examples=2000 bench.windows=3

Overrides are the app's (composed from the same conf/); `bench.<key>=<value>` sets the bench's own
options (see BenchOptions). The job is built by the app's own code (build_fine_tuning /
build_pretraining) into `<paths.output_dir>/bench/<time>/run`; where the data folder does not
exist, synthetic data (app.data.synthetic) is written there instead. Reports, as a table and as
`bench.json` next to that run folder:

- training throughput after warm-up (median of timed windows) of the app's `model.fit` on
  `job.batches`, with the app's per-batch callbacks, and of a bare keras-hub model
  (AlbertTextClassifier, or AlbertMaskedLM for pretraining) compiled with Keras defaults and the
  same `jit_compile` / `steps_per_execution`, fed pre-made random batches of identical shapes;
- model FLOPs per step (app.flops) and MFU against a float32 matmul peak measured in this run;
- the input pipeline alone, built anew (read, tokenize, pack, mask, batch), first epoch and
  second (cached) epoch;
- time from process start to the end of the first training step; peak resident memory.
"""

import logging
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, fields
from datetime import datetime
from functools import partial
from pathlib import Path

import keras
import keras_hub
import numpy as np
import sentencepiece
import tensorflow as tf
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from app.callbacks import ProgressLog
from app.config import validate
from app.data import synthetic
from app.data.pipeline import epoch_stream, tokenized
from app.data.task import load_task_data
from app.finetune import build_fine_tuning
from app.flops import albert_flops
from app.instantiate import check_config
from app.pretraining.corpus import expand_files
from app.pretraining.pipeline import corpus_documents, pretraining_examples
from app.pretraining.run import build_masker, build_pretraining
from app.pretraining.sentence_order import order_and_mask
from app.resume import STATE_DIR, StepCheckpoint
from app.run_dir import write_json
from app.strategy import build_strategy
from app.tokenizer import PROTO_NAME, load_tokenizer
from app.train import CONFIG_DIR, _start_session

log = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    """The bench's own knobs (`bench.<name>=<value>` on the command line)."""

    windows: int = 5              # timed windows per loop (the median is reported)
    window_seconds: float = 4.0   # target length of one window
    min_window_steps: int = 2     # at least this many steps (times steps_per_execution)
    matmul_size: int = 2048       # n of the n x n x n float32 matmul peak
    matmul_seconds: float = 2.0   # how long to time it (the best call counts)
    out: str | None = None        # folder for bench.json and the run (default: a new one)


def split_argv(argv: list[str]) -> tuple[BenchOptions, list[str]]:
    """`bench.<key>=<value>` arguments -> BenchOptions; the rest are Hydra overrides."""
    options, overrides = BenchOptions(), []
    types = {f.name: f.type for f in fields(BenchOptions)}
    for arg in argv:
        if not arg.startswith("bench."):
            overrides.append(arg)
            continue
        key, _, value = arg[len("bench."):].partition("=")
        if key not in types:
            raise SystemExit(f"error: unknown bench option {key!r}; expected one of {list(types)}")
        setattr(options, key, types[key](value) if types[key] in (int, float) else value)
    return options, overrides


def compose_config(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with the overrides, as `python -m app` composes it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _process_age() -> float:
    """Seconds since this process started (Linux /proc), else since this module was imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


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


class WindowTimer(keras.callbacks.Callback):
    """Wall time of each epoch (a timed window); with `first_step`, also the end of batch 1."""

    def __init__(self, first_step: bool = False):
        super().__init__()
        self.seconds: list[float] = []
        self.first_step_age: float | None = None
        if first_step:  # a batch hook makes fit synchronous: only for the warm-up
            self.on_train_batch_end = self._first_batch_end

    def _first_batch_end(self, batch, logs=None):
        if self.first_step_age is None:
            self.first_step_age = _process_age()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def _window_steps(step_seconds: float, spe: int, options: BenchOptions) -> int:
    steps = max(options.min_window_steps, math.ceil(options.window_seconds / step_seconds / spe))
    return steps * spe


def warm_up(model, dataset, spe: int, options: BenchOptions, callbacks=(),
            first_step: bool = False) -> tuple[float, float | None]:
    """Compile and probe: (seconds per step, process age at the end of the first step)."""
    timer = WindowTimer(first_step)
    probe = options.min_window_steps * spe
    model.fit(dataset, epochs=2, steps_per_epoch=probe, callbacks=[*callbacks, timer],
              shuffle=False, verbose=0)
    return timer.seconds[1] / probe, timer.first_step_age


def time_windows(model, dataset, step_seconds: float, spe: int, options: BenchOptions,
                 callbacks=()) -> dict:
    """Time `options.windows` windows of one `fit` call, after one untimed window.

    Every window is one Keras epoch of the same iterator (steps_per_epoch), so the input
    pipeline is never restarted between windows.
    """
    steps = _window_steps(step_seconds, spe, options)
    timer = WindowTimer()
    model.fit(dataset, epochs=options.windows + 1, steps_per_epoch=steps,
              callbacks=[*callbacks, timer], shuffle=False, verbose=0)
    windows = timer.seconds[1:]  # the first may still hold retraces / pipeline start
    return {"window_steps": steps, "window_seconds": windows,
            "step_seconds": statistics.median(windows) / steps}


def _random_batches(cfg: DictConfig, vocabulary_size: int, num_outputs: int,
                    pretraining: bool, count: int = 8):
    """`count` pre-made random batches of the app's shapes, (x, y[, sample_weight]), repeated."""
    rng = np.random.default_rng(cfg.seed)
    n, length = (count, cfg.trainer.batch_size), cfg.data.sequence_length
    x = {
        "token_ids": rng.integers(5, vocabulary_size, (*n, length), dtype=np.int32),
        "segment_ids": np.zeros((*n, length), np.int32),
        "padding_mask": np.ones((*n, length), np.int32),
    }
    if pretraining:
        predictions = cfg.data.max_predictions
        x["mask_positions"] = np.sort(rng.integers(1, length, (*n, predictions), dtype=np.int32))
        data = (x, rng.integers(5, vocabulary_size, (*n, predictions), dtype=np.int32),
                np.ones((*n, predictions), np.float32))
    else:
        data = (x, rng.integers(0, num_outputs, n, dtype=np.int32))
    return tf.data.Dataset.from_tensor_slices(data).repeat()  # each element is a whole batch


def bare_model(cfg: DictConfig, vocabulary_size: int, num_outputs: int, pretraining: bool):
    """keras-hub's own model at the app's shape, compiled with Keras defaults (AdamW, CE)."""
    args = {k: v for k, v in OmegaConf.to_container(cfg.model).items()
            if k not in ("_target_", "preset", "classifier_dropout")}
    backbone = keras_hub.models.AlbertBackbone(vocabulary_size=vocabulary_size, **args)
    if pretraining:
        model = keras_hub.models.AlbertMaskedLM(backbone, preprocessor=None)
    else:
        model = keras_hub.models.AlbertTextClassifier(backbone, num_outputs, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(cfg.optimizer.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["sparse_categorical_accuracy"],
        jit_compile=cfg.trainer.jit_compile,
        steps_per_execution=cfg.trainer.steps_per_execution,
    )
    return model


def fresh_pipeline(cfg: DictConfig, run_dir: Path) -> tuple:
    """The app's training pipeline built anew (empty cache), with the run's tokenizer.

    Returns `(start -> batches, steps per epoch, seconds spent before the first batch)`: for
    fine-tuning reading the split; for pretraining reading, tokenizing and packing the corpus
    (its cache is filled while counting).
    """
    started = time.perf_counter()
    tokenizer = load_tokenizer(run_dir / "tokenizer" / PROTO_NAME)
    data, per_example, boundaries = cfg.data, None, None
    if data.task == "pretraining":
        processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.proto)
        files = expand_files(data.dir, data.train_file, "data.train_file")
        holdout = None if data.eval_file else False
        documents = partial(corpus_documents, files, data, holdout=holdout)
        examples, count = pretraining_examples(documents, processor, data, cfg.seed,
                                               max_examples=data.max_train_examples)
        per_example = order_and_mask(build_masker(tokenizer, data))
    else:
        _, split, _ = load_task_data(data)
        preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
            tokenizer, sequence_length=data.sequence_length)
        examples, count = tokenized(split, preprocessor), len(split)
        boundaries = data.bucket_boundaries
    batch_size = cfg.trainer.batch_size
    batches = epoch_stream(examples, count, batch_size, data.shuffle_buffer, cfg.seed, 2,
                           per_example=per_example, bucket_boundaries=boundaries)
    return batches, math.ceil(count / batch_size), time.perf_counter() - started


def _iterate(dataset: tf.data.Dataset, steps: int) -> tuple[float, int]:
    """Seconds to pull `steps` batches, and the examples in them."""
    started, examples = time.perf_counter(), 0
    for batch in dataset.take(steps):
        examples += int(tf.shape(tf.nest.flatten(batch)[0])[0])
    return time.perf_counter() - started, examples


def time_pipeline(cfg: DictConfig, run_dir: Path) -> dict:
    """The input pipeline alone, built anew: a first epoch (reads, tokenizes, packs, masks,
    fills the cache), then a second one (from the cache: masking only, no tokenizing)."""
    batches, steps, read_seconds = fresh_pipeline(cfg, run_dir)
    first, examples = _iterate(batches(0), steps)
    second, _ = _iterate(batches(steps), steps)
    return {
        "examples": examples,
        "read_seconds": read_seconds,
        "first_epoch_seconds": first,
        "cached_epoch_seconds": second,
        "first_pass_examples_per_second": examples / (read_seconds + first),
        "cached_examples_per_second": examples / second,
    }


def matmul_peak(n: int, dtype=tf.float32, device: str = "/cpu:0", seconds: float = 2.0) -> float:
    """Best FLOP/s of an n x n x n matmul chain on `device` (10 matmuls per call)."""
    with tf.device(device):
        a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
        a = tf.cast(a / math.sqrt(n), dtype)

        @tf.function
        def chain(x):
            for _ in range(10):
                x = tf.matmul(x, a)
            return x

        chain(a).numpy()
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            chain(a).numpy()
            best = max(best, 10 * 2 * n**3 / (time.perf_counter() - started))
    return best


def flops_per_step(cfg: DictConfig, vocabulary_size: int, num_outputs: int) -> int:
    """Training FLOPs of one global batch (app.flops)."""
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


def run_bench(cfg: DictConfig, options: BenchOptions) -> dict:
    """Build the app's job, time it, the pipeline and a bare loop; return the report."""
    out = Path(options.out or Path(cfg.paths.output_dir) / "bench"
               / f"{datetime.now():%Y-%m-%d_%H-%M-%S}")
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = with_data(cfg, out)
    validate(cfg)
    check_config(cfg)
    pretraining = cfg.data.task == "pretraining"
    strategy = build_strategy(cfg.strategy)
    _start_session(cfg)

    started = time.perf_counter()
    build_job = build_pretraining if pretraining else build_fine_tuning
    job = build_job(cfg, run_dir, strategy)
    job_seconds = time.perf_counter() - started
    vocabulary_size = job.model.backbone.vocabulary_size
    num_outputs = 2 if pretraining else int(job.model.num_classes)
    spe = cfg.trainer.steps_per_execution
    app_callbacks = [
        ProgressLog(cfg.trainer.batch_size, job.steps_per_epoch, cfg.trainer.epochs,
                    cfg.trainer.log_every_n_steps),
        StepCheckpoint(run_dir / STATE_DIR, cfg.trainer.checkpoint_every_n_steps,
                       cfg.trainer.keep_checkpoints, 0),
    ]
    log.info("Timing the app's fit (%s)", type(job.model).__name__)
    # The warm-up fit starts right after the build, as in `python -m app`: it measures start-up.
    step_seconds, startup = warm_up(job.model, job.batches(0).repeat(), spe, options,
                                    app_callbacks, first_step=True)
    log.info("Timing the input pipeline alone")
    pipeline = time_pipeline(cfg, run_dir)
    log.info("Timing the app's fit")
    app_timing = time_windows(job.model, job.batches(0).repeat(), step_seconds, spe, options,
                              app_callbacks)

    log.info("Timing a bare keras-hub loop on pre-made batches")
    bare = bare_model(cfg, vocabulary_size, num_outputs, pretraining)
    batches = _random_batches(cfg, vocabulary_size, num_outputs, pretraining)
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
        "run_dir": str(run_dir),
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


def main(argv: list[str] | None = None) -> dict:
    """`python -m app.bench [overrides] [bench.<option>=<value>]`: print the table, write JSON."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    options, overrides = split_argv(sys.argv[1:] if argv is None else argv)
    report = run_bench(compose_config(overrides), options)
    print(table(report))
    print(f"bench.json: {Path(report['run_dir']).parent / 'bench.json'}")
    return report


if __name__ == "__main__":
    main()
