"""Chinese ALBERT checkpoints (a WordPiece vocab.txt, hidden_act relu/gelu) in and out.

Random-init transformers ALBERTs saved as the Hub has them (config.json, model.safetensors, a BERT
vocab.txt built here, tokenizer_config.json naming BertTokenizerFast) are loaded through the app's
path and compared with transformers on a Chinese+English batch; the activation survives `.keras`
files and keras-hub presets; `export/hf` of a WordPiece relu classifier reloads in transformers;
every malformed checkpoint gives one ConfigError naming what is wrong. Needs the `interop` extra.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, compose_config

torch = pytest.importorskip("torch", reason="the `interop` extra (torch) is not installed")
transformers = pytest.importorskip("transformers", reason="the `interop` extra is not installed")

import keras_hub  # noqa: E402
from albert_parity import (  # noqa: E402
    SMALL,
    app_inputs,
    assert_same_ids,
    backbone_differences,
    classifier_from,
    perturb,
)
from safetensors.numpy import load_file, save_file  # noqa: E402

from app.data import synthetic  # noqa: E402
from app.data.tokenizer import train_sentencepiece  # noqa: E402
from app.data.wordpiece import AlbertWordPieceTokenizer  # noqa: E402
from app.errors import ConfigError  # noqa: E402
from app.models import backbone as backbone_module  # noqa: E402
from app.models.albert_backbone import AlbertActivationBackbone, activation_of  # noqa: E402
from app.models.backbone import build_backbone, with_overrides  # noqa: E402
from app.models.pretrainer import AlbertPretrainer  # noqa: E402
from app.runs.transformers_export import export_transformers  # noqa: E402
from app.runtime.loading import (  # noqa: E402
    load_backbone,
    load_heads,
    load_model,
    load_preset_tokenizer,
)

# A BERT-style vocabulary: [PAD] first, [UNK]/[CLS]/[SEP]/[MASK] after unused slots (as in
# bert-base-chinese: 0, 100..103), so special ids are read from the tokenizer, not assumed.
SPECIALS = ["[PAD]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHINESE = ("这部电影很好看剧情太无聊了我喜欢个演员的色真也不是一在有人他们中大来上国到说为子和你"
           "地出道时年得就那要下以生会自着去过家学对可她里后小么心多天而能好都然没日于起还发成事只作"
           "当想看文开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法"
           "此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电"
           "四第门相次东政海口使教西再平听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场")
ENGLISH = ["the", "movie", "film", "good", "bad", "great", "boring", "act", "play", "story", "i",
           "like", "it", "was", "very", "and", "not", "is", "a", "this", "plot", "cafe", "vu",
           "deja", "##s", "##ing", "##ed", "##ly", "##er", "##or", "##ful", "##ion"]
PUNCTUATION = list("，。！？：（）,.!?:()'-") + [str(digit) for digit in range(10)] + ["##0"]
VOCAB = SPECIALS + list(dict.fromkeys(CHINESE)) + ENGLISH + PUNCTUATION
# 龘 and 角 are not in VOCAB ([UNK]); upper case, accents and full-width punctuation on purpose.
TEXTS = ["这部电影很好看，the acting was GREAT!", "剧情太无聊了。Boring movies...",
         "我喜欢这个演员 playing 的角色（真的）", "Café déjà vu：龘 and unknownword 2020"]
PAIRS = (TEXTS[:3], ["我也喜欢", "the plot is bad", "不好看！"])
ACTIVATIONS = ("relu", "gelu_new", "gelu")


def write_tokenizer(folder: Path, vocab=VOCAB, tokenizer_class="BertTokenizerFast") -> Path:
    """A vocab.txt and a tokenizer_config.json (lower-casing, as bert-base-chinese's class)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    settings = {"do_lower_case": True}
    if tokenizer_class is not None:
        settings["tokenizer_class"] = tokenizer_class
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


def chinese_folder(out: Path, cls=None, hidden_act: str = "relu", vocab=VOCAB, seed: int = 0,
                   **shape) -> Path:
    """A random-init transformers ALBERT with a WordPiece vocab.txt, as a Hub download."""
    torch.manual_seed(seed)
    cls = cls or transformers.AlbertForPreTraining
    config = transformers.AlbertConfig(**{**SMALL, "vocab_size": len(vocab),
                                          "hidden_act": hidden_act, **shape})
    model = cls(config).eval()
    perturb(model)
    model.save_pretrained(out, safe_serialization=True)
    return write_tokenizer(out, vocab)


def hf_inputs(folder: Path, texts, pairs=None) -> dict:
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    args = (list(texts),) if pairs is None else (list(texts), list(pairs))
    return tokenizer(*args, padding=True, return_token_type_ids=True, return_tensors="pt")


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def parity_inputs(folder: Path) -> tuple[dict, dict]:
    """The app's and transformers' inputs for PAIRS, checked equal."""
    app, hf = app_inputs(folder, *PAIRS), hf_inputs(folder, *PAIRS)
    assert_same_ids(app, hf)
    return app, hf


def mlm_difference(folder: Path) -> float:
    """Max abs difference of the masked-LM logits, the app's AlbertPretrainer vs transformers."""
    app, hf = parity_inputs(folder)
    model = AlbertPretrainer(load_backbone(str(folder)))
    assert load_heads(model, str(folder)) == ["predictions", "sop_classifier"]
    positions = np.tile(np.arange(1, 9), (len(PAIRS[0]), 1))
    outputs = model({**app, "mask_positions": positions})
    with torch.no_grad():
        expected = transformers.AlbertForPreTraining.from_pretrained(folder).eval()(**hf)
    mlm = np.take_along_axis(expected.prediction_logits.numpy(), positions[..., None], axis=1)
    return float(np.abs(np.asarray(outputs["mlm"]) - mlm).max())


@pytest.fixture(scope="module")
def spiece(tmp_path_factory) -> Path:
    """A small SentencePiece model with ALBERT's special pieces."""
    texts = [row[0] for row in synthetic.sentiment_rows(200, seed=3)]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("spm") / "spiece", vocab_size=100,
                               lowercase=False, hard_vocab_limit=False)


# === In: parity with transformers ===

@pytest.fixture(scope="module")
def pretraining_folder(tmp_path_factory):
    """`AlbertForPreTraining` folders by hidden_act, made once."""
    folders = {}

    def make(activation: str) -> Path:
        if activation not in folders:
            out = tmp_path_factory.mktemp(activation) / "albert"
            folders[activation] = chinese_folder(out, hidden_act=activation)
        return folders[activation]
    return make


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_the_backbone_matches_transformers(pretraining_folder, activation):
    folder = pretraining_folder(activation)
    backbone = load_backbone(str(folder))
    assert activation_of(backbone) == activation
    differences = backbone_differences(folder, *parity_inputs(folder), backbone)
    print(f"hidden_act {activation}: backbone max abs diff", differences)
    assert differences["sequence"] < 1e-5 and differences["pooled"] < 1e-5


# transformers' masked-LM head applies `hidden_act` too (keras-hub's hard-codes the tanh GELU:
# 0.11 apart for relu before the app's head took the backbone's activation).
@pytest.mark.parametrize("activation", ["relu", "gelu_new", "gelu"])
def test_the_masked_lm_head_matches_transformers(pretraining_folder, activation):
    difference = mlm_difference(pretraining_folder(activation))
    print(f"hidden_act {activation}: masked-LM logits max abs diff", difference)
    assert difference < 1e-4


def test_the_wordpiece_ids_are_bert_tokenizer_fasts(tmp_path):
    folder = write_tokenizer(tmp_path / "tokenizer")
    tokenizer = load_preset_tokenizer_of(folder)
    assert isinstance(tokenizer, AlbertWordPieceTokenizer)
    expected = transformers.BertTokenizerFast.from_pretrained(folder)(TEXTS)["input_ids"]
    ids = tokenizer(TEXTS)
    assert [list(np.asarray(row)) for row in ids] == [row[1:-1] for row in expected]
    assert VOCAB.index("[UNK]") in expected[3]


def load_preset_tokenizer_of(tokenizer_folder: Path):
    """The tokenizer of a checkpoint that ships none, from `model.tokenizer`."""
    checkpoint = chinese_folder(tokenizer_folder.parent / "bare", transformers.AlbertModel)
    for name in ("vocab.txt", "tokenizer_config.json"):
        (checkpoint / name).unlink()
    return load_preset_tokenizer(str(checkpoint), tokenizer=str(tokenizer_folder))


# === The activation as a saved config argument ===

def tiny_inputs() -> dict:
    return {"token_ids": np.array([[4, 10, 11, 12, 5, 0]]), "segment_ids": np.zeros((1, 6), int),
            "padding_mask": np.array([[1, 1, 1, 1, 1, 0]])}


def test_the_activation_survives_keras_files_and_presets(tmp_path):
    backbone = AlbertActivationBackbone(
        vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, embedding_dim=8, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=32, activation="relu")
    expected = np.asarray(backbone(tiny_inputs())["sequence_output"])
    tanh_gelu = keras_hub.models.AlbertBackbone(**{
        k: v for k, v in backbone.get_config().items() if k not in ("activation", "name")})
    tanh_gelu.set_weights(backbone.get_weights())
    assert np.abs(np.asarray(tanh_gelu(tiny_inputs())["sequence_output"]) - expected).max() > 1e-3
    backbone.save(tmp_path / "backbone.keras")
    backbone.save_to_preset(str(tmp_path / "preset"))
    reloaded = {
        ".keras": load_model(tmp_path / "backbone.keras"),
        "keras-hub from_preset": keras_hub.models.AlbertBackbone.from_preset(
            str(tmp_path / "preset")),
        "load_backbone": load_backbone(str(tmp_path / "preset")),
        "with_overrides": with_overrides(backbone, dropout=0.2, max_sequence_length=16),
    }
    for how, copy in reloaded.items():
        assert type(copy) is AlbertActivationBackbone and copy.activation == "relu", how
        outputs = np.asarray(copy(tiny_inputs())["sequence_output"])
        np.testing.assert_allclose(outputs, expected, atol=1e-6, err_msg=how)


@pytest.mark.parametrize(("activation", "cls"), [
    ("gelu_new", keras_hub.models.AlbertBackbone), ("relu", AlbertActivationBackbone),
    ("gelu", AlbertActivationBackbone)])
def test_random_init_builds_keras_hubs_class_for_its_own_gelu_only(activation, cls):
    cfg = compose_config(*TINY, f"model.activation={activation}", "model.tokenizer=/tmp")
    backbone = build_backbone(cfg.model, vocabulary_size=len(VOCAB))
    assert type(backbone) is cls and activation_of(backbone) == activation


def test_an_unknown_activation_is_refused():
    cfg = compose_config(*TINY, "model.activation=swish")
    with pytest.raises(ConfigError, match=r"`model.activation` must be one of \['gelu_new', "
                                          r"'gelu', 'relu'\]. Received: 'swish'"):
        build_backbone(cfg.model, vocabulary_size=len(VOCAB))


def test_a_presets_activation_wins_and_an_explicit_other_one_is_an_error(tmp_path, monkeypatch):
    folder = chinese_folder(tmp_path / "albert", transformers.AlbertModel)
    cfg = compose_config(*TINY, f"model.preset={folder}", "model.activation=gelu")
    assert activation_of(build_backbone(cfg.model, len(VOCAB))) == "relu"
    monkeypatch.setattr(backbone_module, "command_line_keys", lambda: {"model.activation"})
    with pytest.raises(ConfigError, match=r"`model.activation` would change the architecture.*"
                                          r"the preset has activation=relu, received gelu"):
        build_backbone(cfg.model, len(VOCAB))


# === Out: export/hf of a WordPiece relu classifier ===

def test_export_of_a_wordpiece_relu_classifier_reloads_in_transformers(tmp_path):
    folder = chinese_folder(tmp_path / "albert", transformers.AlbertForSequenceClassification,
                            num_labels=3)
    tokenizer = load_preset_tokenizer(str(folder))
    model = classifier_from(folder, 3)
    app = app_inputs(folder, *PAIRS)
    logits = np.asarray(model(app))
    out = export_transformers(model, tokenizer, tmp_path / "hf", 64, ["neg", "neu", "pos"])
    assert not (out / "spiece.model").exists()
    assert (out / "vocab.txt").read_text(encoding="utf-8").splitlines() == VOCAB
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_act"] == "relu"
    assert [config[f"{name}_token_id"] for name in ("pad", "bos", "eos")] == [0, 4, 5]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    hf = hf_tokenizer(*PAIRS, padding=True, return_tensors="pt")
    assert_same_ids(app, hf)
    with torch.no_grad():
        reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
        difference = float(np.abs(reloaded(**hf).logits.numpy() - logits).max())
    print("export/hf relu WordPiece classifier vs app: max abs diff", difference)
    assert difference < 1e-5 and reloaded.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    # The run's keras-hub preset holds the WordPiece tokenizer and the relu backbone.
    model.preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(tokenizer, 64)
    model.save_to_preset(str(tmp_path / "preset"))
    preset_tokenizer = load_preset_tokenizer(str(tmp_path / "preset"))
    assert isinstance(preset_tokenizer, AlbertWordPieceTokenizer)
    assert preset_tokenizer.get_vocabulary() == VOCAB
    assert activation_of(load_backbone(str(tmp_path / "preset"))) == "relu"


# === Bad checkpoints: one clear error each ===

def test_a_vocab_without_mask_is_refused_naming_it(tmp_path):
    folder = chinese_folder(tmp_path / "albert", transformers.AlbertModel)
    write_tokenizer(folder, [token for token in VOCAB if token != "[MASK]"] + ["[unused3]"])
    with pytest.raises(ConfigError, match=r"\[MASK\]"):
        load_preset_tokenizer(str(folder))


def test_both_tokenizer_files_follow_tokenizer_class(tmp_path, spiece, caplog):
    folder = chinese_folder(tmp_path / "albert", transformers.AlbertModel)
    shutil.copyfile(spiece, folder / "spiece.model")
    caplog.set_level("INFO", logger="app.runtime.loading")
    tokenizer = load_preset_tokenizer(str(folder))
    assert isinstance(tokenizer, AlbertWordPieceTokenizer)
    assert "holds both spiece.model and vocab.txt: using vocab.txt" in caplog.text
    size = tokenizer.vocabulary_size()
    for tokenizer_class in ("AlbertTokenizer", None):  # no class: spiece.model, as transformers
        write_tokenizer(folder, tokenizer_class=tokenizer_class)
        with pytest.raises(ConfigError, match=rf"the tokenizer has \d+ entries, but `model.preset`"
                                              rf" .* has vocab_size {size}"):
            load_preset_tokenizer(str(folder))
        assert "using spiece.model" in caplog.text


def test_an_unsupported_tokenizer_class_is_refused_naming_it(tmp_path):
    folder = chinese_folder(tmp_path / "albert", transformers.AlbertModel)
    write_tokenizer(folder, tokenizer_class="XLNetTokenizer")
    with pytest.raises(ConfigError, match=r"tokenizer_class 'XLNetTokenizer' is not supported; "
                                          r"expected one of \['AlbertTokenizer', "
                                          r"'AlbertTokenizerFast', 'BertTokenizer'"):
        load_preset_tokenizer(str(folder))


def test_a_vocab_of_another_size_is_refused_naming_both(tmp_path):
    folder = chinese_folder(tmp_path / "albert", transformers.AlbertModel)
    write_tokenizer(folder, VOCAB + ["extra"])
    with pytest.raises(ConfigError, match=rf"has {len(VOCAB) + 1} entries, but `model.preset` "
                                          rf".*config.json has vocab_size {len(VOCAB)}"):
        load_preset_tokenizer(str(folder))


def test_a_hidden_act_of_no_supported_kind_is_refused_naming_it(tmp_path):
    folder = chinese_folder(tmp_path / "albert", transformers.AlbertModel)
    edit_json(folder / "config.json", hidden_act="gelu_pytorch_tanh")
    assert type(load_backbone(str(folder))) is keras_hub.models.AlbertBackbone
    edit_json(folder / "config.json", hidden_act="swish")
    with pytest.raises(ConfigError, match=r"hidden_act 'swish'; supported: \['gelu_new', "
                                          r"'gelu_pytorch_tanh', 'gelu', 'relu'\]"):
        load_backbone(str(folder))


BRIGHTMART = r"brightmart's albert_zh layout, not the transformers layout.*" \
             r"convert_albert_original_tf_checkpoint_to_pytorch"


def test_brightmart_native_layouts_are_refused_with_the_conversion(tmp_path):
    folder = chinese_folder(tmp_path / "albert", transformers.AlbertModel)
    config = json.loads((folder / "config.json").read_text())
    native = tmp_path / "albert_zh"
    native.mkdir()
    (native / "albert_config.json").write_text(json.dumps({**config, "ln_type": "postln"}))
    write_tokenizer(native)
    for load in (load_backbone, load_preset_tokenizer):
        with pytest.raises(ConfigError, match=BRIGHTMART):
            load(str(native))
    edit_json(folder / "config.json", ln_type="postln")
    with pytest.raises(ConfigError, match=BRIGHTMART):
        load_backbone(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    arrays = load_file(folder / "model.safetensors")
    arrays["bert/embeddings/word_embeddings_2"] = arrays.pop("embeddings.word_embeddings.weight")
    save_file(arrays, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"weights named like 'bert/embeddings/word_embeddings_2"
                                          r"', " + BRIGHTMART):
        load_backbone(str(folder))


def test_no_tokenizer_files_ask_for_model_tokenizer_and_it_works(tmp_path):
    folder = chinese_folder(tmp_path / "albert", transformers.AlbertModel)
    tokenizer_folder = tmp_path / "bert-base-chinese"
    tokenizer_folder.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.move(folder / name, tokenizer_folder / name)
    with pytest.raises(ConfigError, match=r"has no tokenizer \(neither spiece.model nor "
                                          r"vocab.txt\); set `model.tokenizer=<folder with "
                                          r"vocab.txt or spiece.model>`"):
        load_preset_tokenizer(str(folder))
    app = app_inputs(folder, *PAIRS, tokenizer=tokenizer_folder)
    assert_same_ids(app, hf_inputs(tokenizer_folder, *PAIRS))


# === albert_chinese_base shapes ===

def base_vocab(size: int = 21128) -> list[str]:
    """VOCAB filled up to `size` with CJK characters (U+4E00..., then U+3400...) not in it."""
    known = set(VOCAB)
    codes = [*range(0x4E00, 0xA000), *range(0x3400, 0x4DC0)]
    extra = (chr(code) for code in codes if chr(code) not in known)
    return VOCAB + [next(extra) for _ in range(size - len(VOCAB))]


@pytest.fixture(scope="module")
def chinese_base_folder(tmp_path_factory) -> Path:
    """An `AlbertForPreTraining` of albert_chinese_base's shapes (relu)."""
    return chinese_folder(tmp_path_factory.mktemp("base") / "albert", hidden_act="relu",
                          vocab=base_vocab(), embedding_size=128, hidden_size=768,
                          num_hidden_layers=12, num_hidden_groups=1, inner_group_num=1,
                          num_attention_heads=12, intermediate_size=3072,
                          max_position_embeddings=512)


@pytest.mark.slow
def test_albert_chinese_base_shapes_match_transformers(chinese_base_folder):
    folder = chinese_base_folder
    backbone = load_backbone(str(folder))
    assert backbone.vocabulary_size == 21128 and activation_of(backbone) == "relu"
    differences = backbone_differences(folder, *parity_inputs(folder), backbone)
    print("albert_chinese_base shapes (relu): backbone max abs diff", differences)
    assert differences["sequence"] < 1e-5 and differences["pooled"] < 1e-5


@pytest.mark.slow
def test_albert_chinese_base_shapes_masked_lm_matches_transformers(chinese_base_folder):
    difference = mlm_difference(chinese_base_folder)
    print("albert_chinese_base shapes (relu): masked-LM logits max abs diff", difference)
    assert difference < 1e-4
