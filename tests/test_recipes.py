"""The GLUE recipes and Optuna searches compose, validate and read GLUE-shaped files."""


import pytest
from conftest import CONF_DIR, compose_config

from app.config.validate import optimized_metric, validate
from app.data.task import load_task_data

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
