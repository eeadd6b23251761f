"""Token classifiers in and out of transformers' `AlbertForTokenClassification`.

In: random-init transformers folders (a SentencePiece spiece.model, or a WordPiece vocab.txt with
relu) load as the app's tagger with their token head and the tag order of their id2label, and
give transformers' logits. Out: a tagging run's `export/hf` is covered in
test_token_classification.py (its trained runs). Needs the `interop` extra.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from conftest import TINY, compose_config
from tagging_data import tagged_dir

torch = pytest.importorskip("torch", reason="the `interop` extra (torch) is not installed")
transformers = pytest.importorskip("transformers", reason="the `interop` extra is not installed")

from albert_parity import SMALL, app_inputs, perturb  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from test_chinese_checkpoints import chinese_folder  # noqa: E402

from app.data.tokenizer import train_sentencepiece  # noqa: E402
from app.models.tagger import build_tagger  # noqa: E402
from app.runs.layout import RunLayout  # noqa: E402
from app.runtime.loading import load_preset_tokenizer  # noqa: E402
from app.tasks.token_classification import TokenClassification  # noqa: E402

# Not the app's sorted order (O, B-LOC, I-LOC, B-PER, I-PER): the checkpoint's order must win.
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
LABELS = {"id2label": dict(enumerate(TAGS)), "label2id": {t: i for i, t in enumerate(TAGS)}}
TEXTS = ["Anna Berg flew to New York", "张伟昨天去了北京。", "Tom said nothing"]


@pytest.fixture(scope="module")
def sentencepiece_folder(tmp_path_factory) -> Path:
    """An AlbertForTokenClassification with a spiece.model, as the Hub has it."""
    out = tmp_path_factory.mktemp("hf-sp")
    texts = (TEXTS + ["the report from Paris was late", "In Rome , Lea met Ken Ito ."]) * 20
    spiece = train_sentencepiece(texts, out / "spm", vocab_size=80, lowercase=False,
                                 hard_vocab_limit=False)
    size = sentencepiece.SentencePieceProcessor(model_file=str(spiece)).get_piece_size()
    torch.manual_seed(0)
    config = transformers.AlbertConfig(**SMALL, vocab_size=size, num_labels=len(TAGS), **LABELS)
    model = transformers.AlbertForTokenClassification(config).eval()
    perturb(model)
    folder = out / "albert"
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "spiece.model").write_bytes(spiece.read_bytes())
    transformers.AlbertTokenizer.from_pretrained(folder, do_lower_case=False).save_pretrained(
        folder)
    return folder


@pytest.fixture(scope="module")
def wordpiece_folder(tmp_path_factory) -> Path:
    """An AlbertForTokenClassification with a BERT vocab.txt and relu, as Chinese ALBERTs."""
    return chinese_folder(tmp_path_factory.mktemp("hf-wp") / "albert",
                          transformers.AlbertForTokenClassification, num_labels=len(TAGS),
                          **LABELS)


@pytest.mark.parametrize("kind", ["sentencepiece", "wordpiece"])
def test_a_transformers_token_classifier_loads_with_its_head(kind, request):
    folder = request.getfixturevalue(f"{kind}_folder")
    # transformers' token classifier has no pooler: the backbone loads without one
    assert "albert.pooler.weight" not in load_file(folder / "model.safetensors")
    cfg = compose_config(*TINY, f"model.preset={folder}", "model.classifier_dropout=0.0")
    size = load_preset_tokenizer(str(folder)).vocabulary_size()
    tagger = build_tagger(cfg.model, len(TAGS), size)
    app = app_inputs(folder, TEXTS)
    hf_model = transformers.AlbertForTokenClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf_model(input_ids=torch.tensor(app["token_ids"]),
                            token_type_ids=torch.tensor(app["segment_ids"]),
                            attention_mask=torch.tensor(app["padding_mask"])).logits.numpy()
    mask = app["padding_mask"][..., None].astype(bool)
    difference = float(np.abs((np.asarray(tagger(app)) - expected) * mask).max())
    print(f"{kind}: token logits max abs diff {difference:.2e}")
    assert difference < 1e-5


def test_the_tag_order_follows_the_checkpoints_id2label(wordpiece_folder, tmp_path):
    data = tagged_dir(tmp_path / "data", "zh", train=40)
    cfg = compose_config(*TINY, "data=conll", f"data.dir={data}",
                         f"model.preset={wordpiece_folder}")
    task = TokenClassification(cfg)
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    task.read_data(layout)
    assert list(task.task.label_names) == TAGS
    assert json.loads(layout.labels.read_text()) == TAGS
