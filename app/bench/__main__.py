"""`albert-bench` (or `python -m app.bench`): the app's training or inference against keras-hub.

    albert-bench model=albert_base trainer.batch_size=8 data.sequence_length=128
    albert-bench experiment=pretrain_wikitext2 paths.data_dir=../shared/data \
        data.max_train_examples=2000 bench.windows=3
    albert-bench mode=predict data=sst2 paths.data_dir=../shared/data bench.predict_copies=20

Every albert-train override applies; `bench.<key>=<value>` sets the bench's own options
(conf/bench.yaml). The job is built by the app's own task steps into
`<paths.output_dir>/bench/<time>/run`; where the data folder does not exist, synthetic data
(app.data.synthetic) is written there instead. Prints a table and writes `bench.json`.
"""

from pathlib import Path

from app.bench import inference, run
from app.errors import ConfigError
from app.runtime.console import command

MODES = {"train": (run.bench_training, run.table),
         "predict": (inference.bench_predict, inference.table)}


@command("bench")
def main(cfg) -> dict:
    """`albert-bench [mode=train|predict] [overrides] [bench.<option>=<value>]`: print the
    table, write bench.json."""
    if cfg.mode not in MODES:
        raise ConfigError(f"`mode` must be one of {list(MODES)}. Received: {cfg.mode!r}")
    bench, table = MODES[cfg.mode]
    report = bench(cfg)
    print(table(report))
    print(f"bench.json: {Path(report['run_dir']).parent / 'bench.json'}")
    return report


if __name__ == "__main__":
    main()
