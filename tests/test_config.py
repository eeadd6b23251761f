"""Config composition (every option of every group) and validation of bad configs."""


import pytest
from conftest import CONF_DIR, TINY, compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from app.config.validate import validate
from app.errors import ConfigError

GROUPS = ("model", "data", "optimizer", "trainer", "strategy", "callbacks", "logger", "paths",
          "experiment", "debug")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose_config(f"{group}={option}", "paths.data_dir=/data")
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert resolved["model"]["_target_"] == "keras_hub.models.AlbertBackbone"
    assert resolved["optimizer"]["_target_"].startswith("keras.optimizers.")


def test_every_group_has_options():
    assert all(options(group) for group in GROUPS)


def test_default_config_is_valid():
    validate(compose_config())


@pytest.mark.parametrize("name,layers,hidden,heads", [
    ("albert_base", 12, 768, 12), ("albert_large", 24, 1024, 16), ("albert_xlarge", 24, 2048, 16),
])
def test_paper_shapes(name, layers, hidden, heads):
    model = compose_config(f"model={name}").model
    assert (model.num_layers, model.hidden_dim, model.num_heads, model.embedding_dim) == (
        layers, hidden, heads, 128)
    assert model.intermediate_dim == 4 * hidden


def test_unknown_key_is_refused():
    with pytest.raises(ConfigCompositionException, match="model.num_layerz"):
        compose_config("model.num_layerz=3")


def test_wrong_type_is_refused():
    with pytest.raises(ConfigCompositionException, match="trainer.batch_size"):
        compose_config("trainer.batch_size=many")


@pytest.mark.parametrize("override,message", [
    ("model.num_groups=3", "`model.num_layers` must be divisible by `model.num_groups`"),
    ("trainer.batch_size=0", "`trainer.batch_size` must be >= 1. Received: 0"),
    ("trainer.epochs=0", "`trainer.epochs` must be >= 1"),
    ("data.task=ranking", "`data.task` must be one of"),
    ("data.format=xml", "`data.format` must be one of"),
    ("data.sequence_length=1024", "`data.sequence_length` must be <= `model.max_sequence_length`"),
    ("model.num_heads=3", "`model.hidden_dim` must be divisible by `model.num_heads`"),
    ("optimized_metric=val_pearson", "`optimized_metric` must be one of"),
    ("tokenizer.proto=missing.model", "`tokenizer.proto` does not exist"),
    ("model.preset=./no/such/preset", "`model.preset` looks like a local preset folder"),
    ("trainer.jit_compile=sometimes", "`trainer.jit_compile` must be one of"),
    ("data.dir=/no/such/dir", "`data.dir` does not exist. Received: '/no/such/dir'"),
    ("data.train_file=missing.tsv", "`data.train_file` does not exist"),
    ("data.class_weight=inverse", "`data.class_weight` must be one of .None, 'balanced'.. "
                                  "Received: 'inverse'"),
    ("trainer.on_collapse=ignore", "`trainer.on_collapse` must be one of .'warn', 'stop'."),
    ("model.learning_rate=0", "`model.learning_rate` must be > 0. Received: 0.0"),
    ("model.preset_learning_rate=-1e-5", "`model.preset_learning_rate` must be > 0"),
    ("tokenizer.kind=bpe", "`tokenizer.kind` must be one of .'sentencepiece', 'wordpiece'."),
    ("tokenizer.vocab=missing.txt", "`tokenizer.vocab` does not exist"),
    ("model.activation=swish", "`model.activation` must be one of .'gelu_new', 'gelu', 'relu'."),
    ("model.tokenizer=/no/such/folder", "`model.tokenizer` must be a folder holding vocab.txt"),
])
def test_bad_config_values(override, message):
    cfg = compose_config(*TINY, override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", "`")):
        validate(cfg)


@pytest.mark.parametrize("override,message", [
    ("data.class_weight=balanced", "`data.class_weight` applies to classification only"),
    ("data.positive_label=1", "`data.positive_label` applies to classification only"),
])
def test_imbalance_keys_need_classification(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*TINY, "data.task=regression", override))
