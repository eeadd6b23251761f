"""Evaluate and predict with a token-classification run, streamed sentence chunk by chunk.

Inputs to tag:
- `.conll`: pre-tokenized sentences (the run's token column; tags, if any, are ignored);
- `.jsonl`: per line `{"tokens": [...]}` (pre-tokenized) or `{"text": "..."}` (raw);
- anything else (`.txt`): one raw text per line (blank lines are skipped).
Raw text is cut into words as `app.data.text.words` does: every Chinese (CJK) character a word,
other text on whitespace. The output (`.jsonl`, or `.conll` by its suffix) gives each sentence's
words with their tags and its entities with character offsets into the text (pre-tokenized
input: into its tokens joined by single spaces).
"""

import itertools
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from app.data import tagged
from app.data.readers import not_utf8
from app.data.tagging import IGNORE, cut_windows, entity_spans, specials_of, word_pieces
from app.data.text.word_units import word_spans
from app.data.writers import atomic_table
from app.errors import ConfigError, DataError
from app.runs.record import write_json
from app.tasks.inference import (
    BATCH_SIZE,
    Progress,
    batch_rows,
    load_model,
    with_overrides,
)
from app.training.entity_metrics import entity_metrics, word_tags

log = logging.getLogger(__name__)

CHUNK_SENTENCES = 2048  # sentences read, tagged and written at a time
OUTPUT_FORMATS = {".jsonl": "jsonl", ".conll": "conll"}


class WindowTagger:
    """Logits of a token classifier for windows, batched by length and cut to the longest
    window of each batch (see `app.tasks.inference.batch_rows`), one traced function for every
    width.

    Args:
        model: a loaded AlbertTokenClassifier (its preprocessor holds the tokenizer).
        data: the run's `data` settings (sequence length, window stride).
        batch_size: windows per forward pass.
    """

    def __init__(self, model, data: DictConfig, batch_size: int):
        self.model, self.data, self.batch_size = model, data, batch_size
        self.tokenizer = model.preprocessor.tokenizer
        self.specials = specials_of(self.tokenizer)
        signature = {name: tf.TensorSpec([None, None], spec.dtype)
                     for name, spec in model.input.items()}
        self._forward = tf.function(lambda x: model(x, training=False),
                                    input_signature=[signature])

    def __call__(self, sentences: list[tuple[str, ...]]):
        """(windows, logits) of these sentences' words."""
        windows = cut_windows(word_pieces(self.tokenizer, sentences), None,
                              self.data.sequence_length, self.data.window_stride,
                              self.specials)
        features = windows.features()
        lengths = windows.padding_mask.sum(axis=1)
        logits = np.zeros((*windows.token_ids.shape, self.model.num_classes), "float32")
        for rows, cut in batch_rows(lengths, windows.token_ids.shape[1], self.batch_size, True):
            batch = {name: values[rows, :cut].astype(self.model.input[name].dtype)
                     for name, values in features.items()}
            logits[rows, :cut] = np.asarray(self._forward(batch), dtype="float32")
        return windows, logits


def chunks(items: Iterator, size: int = CHUNK_SENTENCES) -> Iterator[list]:
    """Lists of up to `size` items, in order."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


TAGGED_KEYS = ("format", "token_column", "tag_column", "tag_scheme", "text_column",
               "label_column")


def tagged_settings(run, overrides: Mapping | None, path: Path) -> DictConfig:
    """The run's `data` settings with the command's `data.*` keys applied; a `.jsonl` file is
    read as JSONL and a `.conll` one as CoNLL unless `data.format` says otherwise."""
    data, overrides = with_overrides(run, overrides, TAGGED_KEYS)
    if "format" not in overrides:
        data["format"] = {".jsonl": "jsonl", ".conll": "conll"}.get(path.suffix.lower(),
                                                                    data["format"])
    if data["format"] not in tagged.FORMATS:
        raise ConfigError(f"`data.format` must be one of {list(tagged.FORMATS)} for a "
                          f"token-classification run. Received: {data['format']!r}")
    return OmegaConf.create(data)


def evaluate_tagged(run, path: Path, name: str, checkpoint: str, batch_size: int,
                    progress: bool, overrides: Mapping | None) -> dict:
    """Entity metrics and the mean loss of a token-classification run on a tagged file,
    written to the run's `eval_<name>.json` (see `app.evaluate.evaluate`)."""
    started = time.perf_counter()
    data = tagged_settings(run, overrides, path)
    if not path.is_file():
        raise ConfigError(f"input file does not exist. Received: '{path}'")
    tags = run.task.label_names
    index = {tag: i for i, tag in enumerate(tags)}
    tagger = WindowTagger(load_model(run, checkpoint), run.config.data, batch_size)
    bar = Progress(path, data.format, progress)
    sentences = tagged.to_iob2(tagged.iter_sentences(
        path, data.format, token_column=data.token_column, tag_column=data.tag_column,
        tokens_field=data.text_column, tags_field=data.label_column), data.tag_scheme, path)
    true_tags, predicted, loss_sum, labelled = [], [], 0.0, 0
    for chunk in chunks(sentences):
        tagged.check_known_tags(chunk, tags, path)
        windows, logits = tagger([s.tokens for s in chunk])
        _, chunk_predicted = word_tags(windows, logits, [len(s.tokens) for s in chunk], tags)
        true_tags += [list(s.tags) for s in chunk]
        predicted += chunk_predicted
        labels = _labels(windows, chunk, index)
        mask = labels != IGNORE
        loss_sum += float(-_log_softmax(logits[mask])[np.arange(mask.sum()), labels[mask]].sum())
        labelled += int(mask.sum())
        bar.update(sum(len(s.tokens) + 1 for s in chunk) if data.format == "conll"
                   else len(chunk))
    bar.close()
    record = {
        "run": str(run.path), "split": name, "file": str(path), "format": data.format,
        "columns": ({"tokens": data.text_column, "tags": data.label_column}
                    if data.format == "jsonl" else
                    {"token": data.token_column, "tag": data.tag_column}),
        "tag_scheme": data.tag_scheme, "checkpoint": checkpoint,
        "num_examples": len(true_tags), "label_names": list(tags),
        "metrics": {"loss": loss_sum / max(labelled, 1),
                    **entity_metrics(true_tags, predicted, tagged.entity_types(tags))},
        "seconds": time.perf_counter() - started,
    }
    write_json(run.layout.evaluation(name), record)
    log.info("Wrote %s", run.layout.evaluation(name))
    return record


def _labels(windows, chunk, index) -> np.ndarray:
    """The windows' labels: each word's tag id at its first piece, IGNORE elsewhere."""
    labels = np.full_like(windows.word, IGNORE)
    rows, positions = np.nonzero(windows.word >= 0)
    for row, position in zip(rows, positions, strict=True):
        sentence = chunk[windows.sentence[row]]
        labels[row, position] = index[sentence.tags[windows.word[row, position]]]
    return labels


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# === Prediction ===


def read_inputs(path: Path, data: DictConfig) -> Iterator[tuple[str, list[str], list]]:
    """(text, words, word character spans) of each input sentence (see the module docstring).

    A missing file is a ConfigError at once; problems inside it come as the reading reaches
    them (DataError naming file and line).
    """
    if not path.is_file():
        raise ConfigError(f"input file does not exist. Received: '{path}'")
    return _inputs(path, data)


def _inputs(path: Path, data: DictConfig) -> Iterator[tuple[str, list[str], list]]:
    suffix = path.suffix.lower()
    if suffix == ".conll":
        for sentence in tagged.iter_sentences(path, "conll", token_column=data.token_column,
                                              with_tags=False):
            yield _pretokenized(list(sentence.tokens))
        return
    try:
        with path.open(encoding="utf-8-sig") as stream:
            for line, raw in enumerate(stream, start=1):
                if not raw.strip():
                    continue
                text = raw.rstrip("\r\n")
                if suffix == ".jsonl":
                    row = _json_row(path, line, raw)
                    if isinstance(row.get("tokens"), list):
                        yield _pretokenized([str(token) for token in row["tokens"]])
                        continue
                    text = row["text"]
                yield _raw(text)
    except UnicodeDecodeError as error:
        raise not_utf8(path) from error


def _json_row(path: Path, line: int, raw: str) -> dict:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{line}: not valid JSON: {error.msg}") from error
    if not isinstance(row, dict) or not (isinstance(row.get("tokens"), list)
                                         or isinstance(row.get("text"), str)):
        raise DataError(f"{path}:{line}: expected an object with a `tokens` list (pre-tokenized) "
                        f"or a `text` string (raw text)")
    return row


def _raw(text: str) -> tuple[str, list[str], list]:
    spans = word_spans(text)
    return text, [text[start:end] for start, end in spans], spans


def _pretokenized(tokens: list[str]) -> tuple[str, list[str], list]:
    spans, start = [], 0
    for token in tokens:
        spans.append((start, start + len(token)))
        start += len(token) + 1
    return " ".join(tokens), tokens, spans


def prediction_row(text: str, words: list[str], spans: list, tags: list[str]) -> dict:
    """One output row: the text, its words and tags, and its entities with character offsets."""
    entities = [{"type": kind, "start": spans[first][0], "end": spans[end - 1][1],
                 "text": text[spans[first][0]:spans[end - 1][1]]}
                for kind, first, end in entity_spans(tags)]
    return {"text": text, "tokens": words, "tags": tags, "entities": entities}


def predict_tagged(run, input_path: Path, output: Path, output_format: str | None,
                   checkpoint: str, batch_size: int, progress: bool) -> Path:
    """Tag every sentence of `input_path` with a token-classification run and write `output`
    atomically (see the module docstring and `app.predict.predict`).

    Args:
        run: the opened run.
        input_path: `.conll`, `.jsonl` or raw text (one per line).
        output: a `.jsonl` or `.conll` file.
        output_format: `jsonl` or `conll`, to override the suffix.
        checkpoint: `export`, `best` or `last`.
        batch_size: windows per forward pass.
        progress: show a progress bar.
    """
    fmt = output_format or OUTPUT_FORMATS.get(output.suffix.lower())
    if fmt not in OUTPUT_FORMATS.values():
        raise ConfigError(f"a token-classification run writes .jsonl or .conll. Received: "
                          f"'{output}' (output_format={output_format!r}); expected a .jsonl or "
                          f".conll output, or output_format=jsonl|conll")
    tags = run.task.label_names
    inputs = read_inputs(input_path, run.config.data)  # checks the file exists
    tagger = WindowTagger(load_model(run, checkpoint), run.config.data, batch_size)
    conll_input = input_path.suffix.lower() == ".conll"
    bar = Progress(input_path, "conll" if conll_input else "jsonl", progress)
    with atomic_table(output, fmt, ["text", "tokens", "tags", "entities"]) as writer:
        for chunk in chunks(inputs):
            writer.write_rows(tagged_rows(tagger, chunk, tags))
            bar.update(sum(len(words) + 1 for _, words, _ in chunk) if conll_input
                       else len(chunk))
    bar.close()
    log.info("Wrote %d tagged sentences to %s", writer.rows, output)
    return output


def tagged_rows(tagger: WindowTagger, chunk: list[tuple[str, list[str], list]],
                tags: list[str]) -> list[dict]:
    """The output rows (see `prediction_row`) of a chunk of (text, words, word spans)."""
    windows, logits = tagger([words for _, words, _ in chunk])
    _, predicted = word_tags(windows, logits, [len(words) for _, words, _ in chunk], tags)
    return [prediction_row(*item, sentence_tags)
            for item, sentence_tags in zip(chunk, predicted, strict=True)]


def tag_texts(run, texts: Sequence, checkpoint: str = "export",
              batch_size: int = BATCH_SIZE) -> list[dict]:
    """Tag texts in memory with a token-classification run: per text, the row
    `predict_tagged` writes to a `.jsonl` output.

    Args:
        run: the opened run.
        texts: raw strings (cut into words as a line of a raw-text input is) or lists of
            tokens (pre-tokenized).
        checkpoint: `export`, `best` or `last`.
        batch_size: windows per forward pass.
    """
    sentences = []
    for i, item in enumerate(texts):
        if isinstance(item, str):
            sentences.append(_raw(item))
        elif isinstance(item, Sequence) and all(isinstance(token, str) for token in item):
            sentences.append(_pretokenized(list(item)))
        else:
            raise ConfigError(f"`texts[{i}]` must be a string or a list of tokens for a "
                              f"token-classification run. Received: {item!r}")
        if not sentences[-1][1]:  # a raw-text input skips blank lines: no row to give
            raise DataError(f"`texts[{i}]`: no words to tag. Received: {item!r}")
    if not sentences:
        return []
    tagger = WindowTagger(load_model(run, checkpoint), run.config.data, batch_size)
    return [row for chunk in chunks(sentences)
            for row in tagged_rows(tagger, chunk, run.task.label_names)]
