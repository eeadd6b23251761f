#!/usr/bin/env bash
# Token-classification training throughput against sentence classification on the same shapes,
# measured one after the other in one invocation (run it on a quiet machine):
#   bash docs/scripts/bench_tagging.sh ../shared/data [extra albert-bench overrides]
# Both pad every batch to data.sequence_length (buckets off), so each step computes the same
# backbone; the tagger's head is a dense layer on every position instead of the pooled one.
# Prints each run's median examples/s (app and bare keras-hub) and the ratio tagging / classification.
set -euo pipefail
data_dir=${1:?the shared data folder (msra-ner and chnsenticorp)}
shift
out=$(mktemp -d)
shapes=(model=albert_small trainer.batch_size=32 data.sequence_length=128 data.bucket_boundaries=null
        data.max_train_examples=2000 data.max_eval_examples=200 "paths.data_dir=$data_dir" "$@")
albert-bench data=msra_ner "${shapes[@]}" tokenizer.kind=wordpiece bench.out="$out/tagging" > /dev/null
albert-bench data=chnsenticorp "${shapes[@]}" tokenizer.kind=wordpiece bench.out="$out/classification" > /dev/null
python - "$out" <<'PY'
import json, sys
from pathlib import Path
rates = {}
for name in ("tagging", "classification"):
    report = json.loads((Path(sys.argv[1]) / name / "bench.json").read_text())
    rates[name] = report["app"]["examples_per_second"]["median"]
    bare = report["bare_keras_hub"]["examples_per_second"]["median"]
    print(f"{name:15s} app {rates[name]:7.1f} examples/s   bare keras-hub {bare:7.1f}")
print(f"tagging / classification: {rates['tagging'] / rates['classification']:.3f}")
PY
