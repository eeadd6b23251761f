"""Fine-tuning throughput of this app against transformers' Trainer, on the same data and shape.

Runs, one after the other in one invocation (each in its own process, so neither framework's
threads or memory linger in the other's):
1. `python -m app` (albert-train) on the first `--examples` rows of a TSV training file, one
   epoch, with the app's defaults (or `--app` overrides); reads `train_examples_per_second` from
   its metrics.json (training batches only, no evaluation or checkpoints).
2. transformers' `AlbertForSequenceClassification` of the same shape (layers, widths, vocabulary,
   activation, dropout), fed the same texts tokenized by that run's SentencePiece model and cut
   to the run's sequence length, through `Trainer` with dynamic padding (each batch padded to its
   longest example) and `train_sampling_strategy="group_by_length"`; reads its
   `train_samples_per_second`.

Both use every core (torch's intra-op threads = os.cpu_count()). Run it on a quiet machine.

Usage (transformers and torch from the `interop` extra, plus `pip install accelerate`, which
transformers' Trainer needs):
    python docs/scripts/bench_vs_transformers.py --data ../shared/data/sst2 --examples 4000
    python docs/scripts/bench_vs_transformers.py --data ../shared/data/chnsenticorp \
        --text-column text
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HF_SCRIPT = r"""
import json, os, sys
import sentencepiece, torch, transformers
from app.data.readers import read_table
args = json.loads(sys.argv[1])
torch.set_num_threads(os.cpu_count())
torch.manual_seed(0)
config = json.loads(open(args["run"] + "/.hydra/config.json").read())
model_cfg, data = config["model"], config["data"]
table = read_table(os.path.join(data["dir"], data["train_file"]), data["format"],
                   [data["text_column"], data["label_column"]])
texts = table.columns[data["text_column"]][:args["examples"]]
labels = table.columns[data["label_column"]][:args["examples"]]
names = sorted(set(labels))
spm = sentencepiece.SentencePieceProcessor(model_file=args["run"] + "/tokenizer/spm.model")
cls, sep = spm.piece_to_id("[CLS]"), spm.piece_to_id("[SEP]")
length = data["sequence_length"]  # the SentencePiece model lowercases, as in the app
examples = [{"input_ids": [cls, *spm.encode(t)[:length - 2], sep], "labels": names.index(y)}
            for t, y in zip(texts, labels)]
albert = transformers.AlbertConfig(
    vocab_size=spm.get_piece_size(), embedding_size=model_cfg["embedding_dim"],
    hidden_size=model_cfg["hidden_dim"], num_hidden_layers=model_cfg["num_layers"],
    num_attention_heads=model_cfg["num_heads"], intermediate_size=model_cfg["intermediate_dim"],
    num_hidden_groups=model_cfg["num_groups"], hidden_act=model_cfg["activation"],
    hidden_dropout_prob=model_cfg["dropout"], attention_probs_dropout_prob=model_cfg["dropout"],
    max_position_embeddings=model_cfg["max_sequence_length"], num_labels=len(names))
model = transformers.AlbertForSequenceClassification(albert)


def pad_to_longest(batch):
    longest = max(len(e["input_ids"]) for e in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, :len(e["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([e["labels"] for e in batch])}


training = transformers.TrainingArguments(
    output_dir=args["out"], per_device_train_batch_size=args["batch_size"], num_train_epochs=1,
    learning_rate=args["learning_rate"], use_cpu=True, report_to=[], save_strategy="no",
    logging_strategy="no", train_sampling_strategy="group_by_length", seed=0,
    dataloader_num_workers=0)
trainer = transformers.Trainer(model=model, args=training, train_dataset=examples,
                               data_collator=pad_to_longest)
metrics = trainer.train().metrics
real = sum(len(e["input_ids"]) for e in examples)
print(json.dumps({"examples_per_second": metrics["train_samples_per_second"],
                  "examples": len(examples), "real_tokens": real,
                  "transformers": transformers.__version__, "torch": torch.__version__}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with train.tsv and dev.tsv")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--model", default="albert_small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--app", nargs="*", default=[], help="extra albert-train overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "app"
        command = [sys.executable, "-m", "app", f"model={args.model}", "data=tsv",
                   f"data.dir={Path(args.data).resolve()}", f"data.text_column={args.text_column}",
                   f"data.label_column={args.label_column}",
                   f"data.max_train_examples={args.examples}", "data.max_eval_examples=256",
                   "trainer.epochs=1", f"trainer.batch_size={args.batch_size}",
                   f"optimizer.learning_rate={args.learning_rate}", "logger=none",
                   f"hydra.run.dir={run}", *args.app]
        subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        metrics = json.loads((run / "metrics.json").read_text())
        config = subprocess.run(
            [sys.executable, "-c", "import json, sys; from omegaconf import OmegaConf; "
             "print(json.dumps(OmegaConf.to_container(OmegaConf.load(sys.argv[1]), "
             "resolve=True)))", str(run / "config.yaml")],
            check=True, capture_output=True, text=True).stdout
        (run / ".hydra/config.json").write_text(config)
        hf = subprocess.run(
            [sys.executable, "-c", HF_SCRIPT,
             json.dumps({"run": str(run), "examples": args.examples, "out": f"{scratch}/hf",
                         "batch_size": args.batch_size, "learning_rate": args.learning_rate})],
            check=True, stdout=subprocess.PIPE, text=True)
        theirs = json.loads(hf.stdout.strip().splitlines()[-1])
    ours = metrics["train_examples_per_second"]
    print(json.dumps({"app_examples_per_second": ours,
                      "transformers_examples_per_second": theirs["examples_per_second"],
                      "app_over_transformers": ours / theirs["examples_per_second"],
                      "app_padding": metrics.get("padding"),
                      "sequence_length": json.loads(config)["data"]["sequence_length"],
                      "examples": args.examples, "model": args.model,
                      "batch_size": args.batch_size, "app_overrides": args.app,
                      "transformers": theirs["transformers"], "torch": theirs["torch"]},
                     indent=1))


if __name__ == "__main__":
    main()
