"""Transformers ALBERT checkpoints in, `export/hf` out: numerical parity with transformers itself.

Small random-init transformers models (a SentencePiece model trained here, `save_pretrained` with
safetensors) are loaded through the app's own path and compared with transformers' outputs on the
same texts; runs the app trains are exported and reloaded with `from_pretrained` in a fresh process.
Needs the `interop` extra (torch, transformers).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, compose_config

torch = pytest.importorskip("torch", reason="the `interop` extra (torch) is not installed")
transformers = pytest.importorskip("transformers", reason="the `interop` extra is not installed")

from albert_parity import (  # noqa: E402
    SMALL,
    app_inputs,
    assert_same_ids,
    backbone_differences,
    classifier_from,
    perturb,
)
from safetensors.numpy import load_file  # noqa: E402

from app.data import synthetic  # noqa: E402
from app.data.tokenizer import train_sentencepiece  # noqa: E402
from app.errors import ConfigError, DataError  # noqa: E402
from app.models.backbone import build_backbone  # noqa: E402
from app.models.pretrainer import AlbertPretrainer  # noqa: E402
from app.runs.transformers_export import export_transformers  # noqa: E402
from app.runtime.loading import load_backbone, load_heads, load_preset_tokenizer  # noqa: E402
from app.train import train  # noqa: E402

# albert-base's shapes; the vocabulary is the test tokenizer's (the loader refuses a mismatch)
BASE = dict(embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=512)
TEXTS = ["The plot was SUPERB , truly.", "a dull, lifeless film ...",
         "Café  déjà vu — naïve   résumé", "tabs\tand\nnewlines", "1,000,000 reasons 🙂 好"]
PAIRS = (TEXTS[:3], TEXTS[2:])


def corpus_sentences(count: int = 400) -> list[str]:
    rows = synthetic.sentiment_rows(count, seed=3)
    return [row[0] for row in rows] + TEXTS + ["Résumé naïve café déjà", "ÉCOLE École"]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory) -> Path:
    """A SentencePiece model with ALBERT's special pieces and albert-base-v2's normalizer."""
    out = tmp_path_factory.mktemp("spm")
    return train_sentencepiece(corpus_sentences(), out / "spiece", vocab_size=200,
                               lowercase=False, hard_vocab_limit=False)


def transformers_folder(out: Path, spiece: Path, cls, seed: int = 0, **shape) -> Path:
    """A random-init transformers ALBERT saved as a Hub download leaves it."""
    torch.manual_seed(seed)
    shape = {**SMALL, **shape}
    if "vocab_size" not in shape:
        import sentencepiece
        shape["vocab_size"] = sentencepiece.SentencePieceProcessor(
            model_file=str(spiece)).get_piece_size()
    model = cls(transformers.AlbertConfig(**shape)).eval()
    perturb(model)
    model.save_pretrained(out, safe_serialization=True)
    shutil.copyfile(spiece, out / "spiece.model")
    transformers.AlbertTokenizer.from_pretrained(out).save_pretrained(out)
    return out


def hf_inputs(folder: Path, texts, pairs=None) -> dict:
    tokenizer = transformers.AlbertTokenizer.from_pretrained(folder)
    args = (list(texts),) if pairs is None else (list(texts), list(pairs))
    return tokenizer(*args, padding=True, return_token_type_ids=True, return_tensors="pt")


def backbone_parity(folder: Path) -> dict[str, float]:
    """Max abs differences of sequence (real tokens) and pooled outputs, app vs transformers."""
    app, hf = app_inputs(folder, *PAIRS), hf_inputs(folder, *PAIRS)
    assert_same_ids(app, hf)
    return backbone_differences(folder, app, hf)


def test_backbone_matches_transformers(tmp_path, spiece):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel)
    differences = backbone_parity(folder)
    print("backbone max abs diff", differences)
    assert differences["sequence"] < 1e-5 and differences["pooled"] < 1e-5


@pytest.mark.slow
def test_backbone_matches_transformers_at_albert_base_shapes(tmp_path, spiece):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel, **BASE)
    differences = backbone_parity(folder)
    print("albert-base shapes: backbone max abs diff", differences)
    assert differences["sequence"] < 1e-5 and differences["pooled"] < 1e-5


def test_pretraining_heads_match_transformers(tmp_path, spiece):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertForPreTraining)
    model = AlbertPretrainer(load_backbone(str(folder)))
    assert load_heads(model, str(folder)) == ["predictions", "sop_classifier"]
    app, hf = app_inputs(folder, TEXTS), hf_inputs(folder, TEXTS)
    positions = np.tile(np.arange(1, 8), (len(TEXTS), 1))
    outputs = model({**app, "mask_positions": positions})
    with torch.no_grad():
        expected = transformers.AlbertForPreTraining.from_pretrained(folder).eval()(**hf)
    mlm = np.take_along_axis(expected.prediction_logits.numpy(), positions[..., None], axis=1)
    differences = {"mlm": float(np.abs(np.asarray(outputs["mlm"]) - mlm).max()),
                   "sop": float(np.abs(np.asarray(outputs["sop"])
                                       - expected.sop_logits.numpy()).max())}
    print("pretraining heads max abs diff", differences)
    assert differences["mlm"] < 1e-4 and differences["sop"] < 1e-5


def test_round_trip_gives_back_the_same_weights(tmp_path, spiece):
    """transformers folder -> the app's classifier (no training step) -> export/hf: same tensors."""
    folder = transformers_folder(tmp_path / "albert", spiece,
                                 transformers.AlbertForSequenceClassification, num_labels=3)
    model = classifier_from(folder, 3)
    app, hf = app_inputs(folder, *PAIRS), hf_inputs(folder, *PAIRS)
    with torch.no_grad():
        expected = transformers.AlbertForSequenceClassification.from_pretrained(folder).eval()
        logits = expected(**hf).logits.numpy()
    assert np.abs(np.asarray(model(app)) - logits).max() < 1e-5
    out = export_transformers(model, load_preset_tokenizer(str(folder)), tmp_path / "hf", 64,
                              ["a", "b", "c"])
    original = load_file(folder / "model.safetensors")
    exported = load_file(out / "model.safetensors")
    assert set(exported) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    assert (out / "spiece.model").read_bytes() == spiece.read_bytes()


def test_a_classifier_head_of_other_labels_starts_fresh(tmp_path, spiece):
    folder = transformers_folder(tmp_path / "albert", spiece,
                                 transformers.AlbertForSequenceClassification, num_labels=3)
    model = classifier_from(folder, 2)
    assert model.output_dense.kernel.shape == (SMALL["hidden_size"], 2)
    assert load_heads(model, str(folder)) == []


# === Bad checkpoints: one clear error each ===

def test_a_pickle_only_folder_is_refused_with_the_conversion_command(tmp_path, spiece):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"pytorch_model.bin \(a pickle.*safe_serialization"):
        load_backbone(str(folder))


def test_a_bert_folder_is_refused_naming_model_type(tmp_path, spiece):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ConfigError, match=r"model_type 'bert', expected 'albert'"):
        load_backbone(str(folder))


def test_a_folder_without_tokenizer_files_asks_for_model_tokenizer(tmp_path, spiece):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel)
    (folder / "spiece.model").unlink()
    with pytest.raises(ConfigError, match=r"has no tokenizer \(neither spiece.model nor "
                                          r"vocab.txt\); set `model.tokenizer=<folder"):
        load_preset_tokenizer(str(folder))


def test_a_corrupt_safetensors_file_is_refused(tmp_path, spiece):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(DataError, match=r"model.safetensors' is not a readable safetensors"):
        load_backbone(str(folder))


def test_hf_scheme_offline_is_one_line_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(ConfigError, match=r"`model.preset` 'hf://albert/albert-base-v2' could "
                                          r"not be downloaded.*local folder"):
        load_backbone("hf://albert/albert-base-v2")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_an_architecture_override_on_a_preset_is_an_error(tmp_path, spiece, sentiment_dir):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel)
    result = cli(*TINY, "data=tsv", f"data.dir={sentiment_dir}", f"model.preset={folder}",
                 f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert ("`model.num_layers` would change the architecture" in result.stderr
            and "the preset has num_layers=4, received 2" in result.stderr), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


# === export/hf of trained runs, reloaded by transformers in a fresh process ===

RELOAD = """
import json, sys
import numpy as np, torch, transformers
export, kind = sys.argv[1], sys.argv[2]
sample = json.loads(sys.stdin.read())
tokenizer = transformers.AutoTokenizer.from_pretrained(export + "/hf")
cls = getattr(transformers, kind)
model = cls.from_pretrained(export + "/hf").eval()
inputs = tokenizer(*sample["inputs"], padding=True, truncation=True, return_tensors="pt")
assert "token_type_ids" in inputs, "the exported tokenizer leaves out token_type_ids"
with torch.no_grad():
    out = model(**inputs)
logits = out.logits if hasattr(out, "logits") else out.sop_logits
print(json.dumps({"max_abs_diff": float(np.abs(logits.numpy() - np.array(sample["outputs"])).max()),
                  "id2label": model.config.id2label, "problem_type": model.config.problem_type}))
"""


def reload_with_transformers(export: Path, kind: str, sample: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", RELOAD, str(export), kind],
                            input=json.dumps(sample), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def trained(tmp_path: Path, data_dir: Path, *overrides: str) -> Path:
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={data_dir}", "trainer.epochs=1",
                         *overrides)
    train(cfg, tmp_path / "run")
    return tmp_path / "run" / "export"


@pytest.mark.slow
def test_fine_tuned_from_a_transformers_folder_exports_what_transformers_reloads(
        tmp_path, spiece, sentiment_dir):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel)
    export = trained(tmp_path, sentiment_dir, f"model.preset={folder}",
                     "model.num_layers=4", "model.num_heads=4", "model.hidden_dim=32")
    sample = json.loads((export / "sample_predictions.json").read_text())
    reloaded = reload_with_transformers(export, "AlbertForSequenceClassification", sample)
    print("single sentence, export/hf vs app: max abs diff", reloaded["max_abs_diff"])
    assert reloaded["max_abs_diff"] < 1e-4
    labels = json.loads((export.parent / "labels.json").read_text())
    assert reloaded["id2label"] == {str(i): name for i, name in enumerate(labels)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pair", "regression"])
def test_runs_from_scratch_export_what_transformers_reloads(tmp_path, kind, pair_dir,
                                                            regression_dir):
    if kind == "pair":
        export = trained(tmp_path, pair_dir, "data.text_column=sentence1",
                         "data.text_pair_column=sentence2")
    else:
        export = trained(tmp_path, regression_dir, "data.task=regression",
                         "data.label_column=score")
    sample = json.loads((export / "sample_predictions.json").read_text())
    reloaded = reload_with_transformers(export, "AlbertForSequenceClassification", sample)
    print(kind, "export/hf vs app: max abs diff", reloaded["max_abs_diff"])
    assert reloaded["max_abs_diff"] < 1e-4
    if kind == "regression":
        assert reloaded["problem_type"] == "regression"


def test_dropout_and_a_shorter_position_table_apply_on_top_of_a_preset(tmp_path, spiece):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel)
    cfg = compose_config(*TINY, f"model.preset={folder}", "model.dropout=0.25",
                         "model.max_sequence_length=32")
    vocabulary_size = load_preset_tokenizer(str(folder)).vocabulary_size()
    backbone = build_backbone(cfg.model, vocabulary_size)
    assert (backbone.dropout, backbone.max_sequence_length) == (0.25, 32)
    positions = load_file(folder / "model.safetensors")["embeddings.position_embeddings.weight"]
    np.testing.assert_array_equal(
        np.asarray(backbone.position_embedding.position_embeddings), positions[:32])
    # A longer table than the preset's cannot come from its weights: the preset's length stays.
    cfg = compose_config(*TINY, f"model.preset={folder}", "model.max_sequence_length=512")
    assert build_backbone(cfg.model, vocabulary_size).max_sequence_length == 64


def test_a_sequence_length_beyond_the_presets_positions_is_an_error(tmp_path, spiece,
                                                                     sentiment_dir):
    folder = transformers_folder(tmp_path / "albert", spiece, transformers.AlbertModel)
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={sentiment_dir}",
                         f"model.preset={folder}", "data.sequence_length=100")
    with pytest.raises(ConfigError, match=r"`data.sequence_length` must be <= the model's "
                                          r"max_sequence_length \(64"):
        train(cfg, tmp_path / "run")
