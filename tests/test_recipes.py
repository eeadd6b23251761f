"""The GLUE and SST-2 recipes and Optuna searches compose, validate and read GLUE-shaped
files; the SST-2 pretraining recipe hands its preset to its fine-tuning recipe."""

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF_DIR, TINY, compose_config, write_splits
from test_pretraining_data import synthetic_documents

from app.config.validate import optimized_metric, validate
from app.data import synthetic
from app.data.pretraining.corpus import expand_files
from app.data.pretraining.pipeline import corpus_documents
from app.data.readers import read_table
from app.data.task import load_task_data
from app.train import train

# Header and two rows of each GLUE task's TSV, as GLUE distributes them.
GLUE = {
    "mrpc": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
             ["1\t1\t2\tHe said \"yes\" .\tHe agreed .", "0\t3\t4\tIt rained .\tPrices fell ."]),
    "rte": ("index\tsentence1\tsentence2\tlabel",
            ["0\tA dog runs .\tAn animal moves .\tentailment",
             "1\tA cat sleeps .\tThe cat runs .\tnot_entailment"]),
    "qnli": ("index\tquestion\tsentence\tlabel",
             ["0\tWho wrote it ?\tShe wrote it .\tentailment",
              "1\tWhen ?\tIt is blue .\tnot_entailment"]),
    "stsb": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
             "\tscore",
             ["0\tmain\tf\t2012\t1\tnone\tnone\tA man plays .\tA man is playing .\t4.800",
              "1\tmain\tf\t2012\t4\tnone\tnone\tA cat .\tA plane takes off .\t0.200"]),
}
# (task, optimized metric, learning rate, batch size, ALBERT's steps)
ALBERT = {"mrpc": ("classification", "val_accuracy", 2e-5, 32, 800),
          "rte": ("classification", "val_accuracy", 3e-5, 32, 800),
          "qnli": ("classification", "val_accuracy", 1e-5, 32, 33112),
          "stsb": ("regression", "val_pearson", 2e-5, 16, 3598)}
TRAIN_SIZES = {"mrpc": 3668, "rte": 2490, "qnli": 104743, "stsb": 5749}


@pytest.mark.parametrize("name", sorted(GLUE))
def test_glue_recipe(tmp_path, name):
    header, rows = GLUE[name]
    folder = tmp_path / name
    folder.mkdir()
    for split in ("train.tsv", "dev.tsv"):
        (folder / split).write_text("\n".join([header, *rows]) + "\n")
    cfg = compose_config(f"experiment={name}", f"paths.data_dir={tmp_path}")
    task, lr, batch, steps = ALBERT[name][0], *ALBERT[name][2:]
    assert cfg.name == name and cfg.data.task == task
    assert optimized_metric(cfg) == ALBERT[name][1]
    assert cfg.optimizer.learning_rate == lr and cfg.trainer.batch_size == batch
    assert cfg.model.preset == "albert_base_en_uncased"
    # Epochs approximate ALBERT's step count on the full training set.
    epochs_steps = cfg.trainer.epochs * TRAIN_SIZES[name] / batch
    assert abs(epochs_steps - steps) / steps < 0.15
    validate(cfg)
    spec, train, _ = load_task_data(cfg.data)
    assert len(train) == 2 and len(train.texts) == 2
    if task == "classification":
        assert len(spec.label_names) == 2


@pytest.mark.parametrize("search", ["sample_optuna", "sst2_optuna"])
def test_optuna_search_configs(search):
    cfg = compose_config(f"hparams_search={search}", return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_ and sweeper.sampler.seed == cfg.seed
    assert sweeper.direction == cfg.direction == "maximize"
    assert sweeper.max_failure_rate == 1.0
    assert cfg.optimized_metric == "val_accuracy" and cfg.name == search
    assert "optimizer.learning_rate" in sweeper.params
    if search == "sst2_optuna":
        assert cfg.data.name == "sst2"  # brings in experiment=sst2


def test_recipes_exist():
    recipes = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    assert {"sst2", "trec", "mrpc", "rte", "qnli", "stsb"} <= recipes


@pytest.mark.parametrize("name,data", [("sst2_pretrained", "sst2"), ("trec_pretrained", "trec")])
def test_pretrained_recipes_fine_tune_the_preset_at_its_rate(name, data):
    cfg = compose_config(f"experiment={name}", "model.preset=runs/x/export/preset")
    assert cfg.data.name == data and cfg.model.preset == "runs/x/export/preset"
    assert cfg.optimizer.learning_rate == cfg.model.preset_learning_rate
    assert cfg.trainer.use_best


def write_wikitext(path: Path, documents: list[list[str]]) -> None:
    """WikiText's layout: ` = Title = ` lines start articles, paragraphs are single lines."""
    lines = [line for index, document in enumerate(documents)
             for line in (f" = Article {index} = ", " " + " ".join(document))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.slow
def test_sst2_recipes_pretrain_on_wikitext_and_the_task_text_then_fine_tune_the_preset(tmp_path):
    (tmp_path / "wikitext-2").mkdir()
    write_wikitext(tmp_path / "wikitext-2" / "wiki.train.raw", synthetic_documents(80, seed=3))
    write_wikitext(tmp_path / "wikitext-2" / "wiki.valid.raw", synthetic_documents(10, seed=4))
    write_splits(tmp_path / "sst2", ("sentence", "label"), synthetic.sentiment_rows, 160, seed=5)
    task_texts = read_table(tmp_path / "sst2" / "train.tsv", "tsv", ["sentence"])
    tiny = [*TINY, f"paths.data_dir={tmp_path}", "trainer.epochs=1"]

    pretrain = compose_config("experiment=pretrain_sst2", *tiny, "data.sequence_length=64",
                              "data.max_predictions=10")
    documents = list(corpus_documents(expand_files(pretrain.data.dir, pretrain.data.train_file,
                                                   "data.train_file"), pretrain.data))
    rows = task_texts.columns["sentence"]  # SST-2 train, never dev: a document per row
    assert [" ".join(document) for document in documents[80:]] == rows
    assert len(documents) == 80 + len(rows)
    train(pretrain, tmp_path / "pretrain")

    preset = tmp_path / "pretrain" / "export" / "preset"
    fine_tune = compose_config("experiment=sst2_pretrained", *tiny, "data.sequence_length=48",
                               f"model.preset={preset}")
    assert fine_tune.optimizer.learning_rate == fine_tune.model.preset_learning_rate
    metrics = train(fine_tune, tmp_path / "fine_tune")
    # The preset's weights are its starting point (tests/test_pretraining_run.py checks them);
    # here: it trained on the recipe's task from the preset, with the pretraining's tokenizer.
    assert metrics["optimized_metric"]["name"] == "val_accuracy"
    assert len(metrics["history"]["loss"]) == 1 and math.isfinite(metrics["history"]["loss"][0])
    assert ((tmp_path / "fine_tune" / "tokenizer" / "spm.model").read_bytes()
            == (tmp_path / "pretrain" / "tokenizer" / "spm.model").read_bytes())


@pytest.mark.slow
def test_default_experiment_learns(tmp_path):
    """`albert-train` with no overrides (the shipped sample, albert_tiny, 3 epochs) is well
    above always answering the dev split's majority label: 15 points of accuracy, and an F1 of
    the positive label and a Matthews correlation that only a model that tells the classes
    apart reaches."""
    cfg = compose_config()
    _, _, dev = load_task_data(cfg.data)
    majority = np.bincount(dev.targets).max() / len(dev)
    final = train(cfg, tmp_path / "run")["final"]
    assert final["val_accuracy"] >= majority + 0.15, (final, majority)
    assert final["val_f1"] > 0.6 and final["val_mcc"] > 0.3, final


@pytest.mark.slow
def test_topics_recipe_learns_every_label(tmp_path):
    """`experiment=topics` (multi-label, shipped data): micro- and macro-F1 far above what
    predicting every label (or none) gets, and most examples' label sets exactly right."""
    cfg = compose_config("experiment=topics")
    _, _, dev = load_task_data(cfg.data)
    share = dev.targets.mean(axis=0)  # each label's share of the dev examples
    all_labels_f1 = float(np.mean(2 * share / (1 + share)))  # macro-F1 of predicting every label
    final = train(cfg, tmp_path / "run")["final"]
    assert final["val_macro_f1"] > all_labels_f1 + 0.2, (final, all_labels_f1)
    assert final["val_micro_f1"] > 0.7 and final["val_exact_match"] > 0.3, final
