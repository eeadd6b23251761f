"""Token classification (named entities, word segmentation, part of speech): the flow's steps
for tagged sentences."""

import logging
import math
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from app.data import tagged
from app.data.pipeline import epoch_stream
from app.data.tagging import Windows, cut_windows, specials_of, word_pieces
from app.data.task import TaskSpec
from app.models.backbone import check_sequence_length
from app.models.lora import inference_copy
from app.models.tagger import TokenAccuracy, build_tagger, tagger_loss
from app.runs.export import export_run
from app.runs.layout import RunLayout
from app.runs.record import write_json
from app.runtime.loading import checkpoint_labels
from app.tasks.base import TrainingData, choose_lengths, compile_for_training, measure_padding
from app.tasks.tokenizer import build_tokenizer
from app.training.collapse import causes
from app.training.entity_metrics import EntityEvaluation

log = logging.getLogger(__name__)

SAMPLE_PREDICTIONS = 8


def read_split(data: DictConfig, filename: str, limit: int | None) -> list[tagged.TaggedSentence]:
    """The sentences of one split in IOB2 (the first `limit`), read as `data` says."""
    path = Path(data.dir) / filename
    sentences = tagged.read_tagged(path, data.format, data.tag_scheme,
                                   token_column=data.token_column, tag_column=data.tag_column,
                                   tokens_field=data.text_column, tags_field=data.label_column)
    return sentences[:limit] if limit is not None else sentences


def windows_of(tokenizer, sentences, tags: tuple[str, ...] | None, data: DictConfig) -> Windows:
    """The sentences' words as model windows (`tags`: label them with these tag ids)."""
    tag_ids = None
    if tags is not None:
        index = {tag: i for i, tag in enumerate(tags)}
        tag_ids = [[index[tag] for tag in sentence.tags] for sentence in sentences]
    return cut_windows(word_pieces(tokenizer, [s.tokens for s in sentences]), tag_ids,
                       data.sequence_length, data.window_stride, specials_of(tokenizer))


class TokenClassification:
    """Tagged sentences -> tokenizer -> windows of word pieces -> AlbertTokenClassifier.

    Args:
        cfg: the composed run config (`data.task=token_classification`).
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.extra_metrics: dict = {}

    def read_data(self, layout: RunLayout) -> None:
        """Read both splits (errors name file and line) and record the tag set."""
        data = self.cfg.data
        self.train_sentences = read_split(data, data.train_file, data.max_train_examples)
        self.eval_sentences = read_split(data, data.eval_file, data.max_eval_examples)
        tags = tagged.tag_vocabulary(self.train_sentences)
        preset_tags = checkpoint_labels(self.cfg.model.preset)
        if preset_tags is not None and sorted(preset_tags) == sorted(tags):
            log.info("Tags in the order of the checkpoint's id2label (its head is kept)")
            tags = preset_tags
        tagged.check_known_tags(self.eval_sentences, tags, Path(data.dir) / data.eval_file)
        self.task = TaskSpec(kind="token_classification", label_names=tags)
        log.info("Task: token_classification, %d train / %d eval sentences, tags %s",
                 len(self.train_sentences), len(self.eval_sentences), list(tags))
        write_json(layout.labels, list(tags))

    def build_tokenizer(self, layout: RunLayout) -> keras_hub.models.AlbertTokenizer:
        """The run's tokenizer (trained on the training words unless given), the lengths left
        null (chosen from the training sentences' pieces) and the preprocessor exported with the
        model (raw strings to pieces, for serving)."""
        texts = [" ".join(sentence.tokens) for sentence in self.train_sentences]
        self.tokenizer = build_tokenizer(self.cfg, texts, layout.tokenizer_dir)
        stride = self.cfg.data.window_stride
        lengths = choose_lengths(self.cfg, layout, self.sentence_lengths,
                                 "cut into overlapping windows", minimum=(stride or 0) + 2)
        if lengths:
            self.extra_metrics["lengths"] = lengths
        self.preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
            self.tokenizer, sequence_length=self.cfg.data.sequence_length)
        return self.tokenizer

    def sentence_lengths(self) -> list[int]:
        """Each training sentence's pieces, with `[CLS]` and `[SEP]`."""
        pieces = word_pieces(self.tokenizer, [s.tokens for s in self.train_sentences])
        return [sum(len(word) for word in sentence) + 2 for sentence in pieces]

    def build_pipelines(self, strategy: tf.distribute.Strategy) -> TrainingData:
        """Windows cut once, shuffled per epoch, optionally length-bucketed."""
        cfg = self.cfg
        windows = windows_of(self.tokenizer, self.train_sentences, self.task.label_names,
                             cfg.data)
        cut = int(np.sum(np.bincount(windows.sentence) > 1))
        if cut:
            log.info("%d train sentences longer than %d pieces are cut into overlapping windows "
                     "(data.window_stride=%s): %d windows in all", cut,
                     cfg.data.sequence_length - 2, cfg.data.window_stride, len(windows))
        examples = tf.data.Dataset.from_tensor_slices((windows.features(), windows.labels))
        batches = epoch_stream(examples.cache(), len(windows), cfg.trainer.batch_size,
                               cfg.data.shuffle_buffer, cfg.seed, cfg.trainer.epochs,
                               padding=cfg.data.padding,
                               bucket_boundaries=cfg.data.bucket_boundaries)
        steps = math.ceil(len(windows) / cfg.trainer.batch_size)
        self.data = TrainingData(batches, len(windows), steps)
        self.extra_metrics["padding"] = measure_padding(self.data)
        return self.data

    def build_model(self) -> keras.Model:
        """The compiled tagger; call under the strategy's scope."""
        cfg = self.cfg
        model = build_tagger(cfg.model, len(self.task.label_names),
                             self.tokenizer.vocabulary_size())
        check_sequence_length(model.backbone, cfg.data.sequence_length)
        return compile_for_training(model, cfg, self.data.steps_per_epoch,
                                    loss=tagger_loss(), metrics=[TokenAccuracy()])

    def build_evaluation(self, model: keras.Model) -> EntityEvaluation:
        """Entity F1 on the whole eval split after every epoch, and the collapse check."""
        cfg = self.cfg
        windows = windows_of(self.tokenizer, self.eval_sentences, self.task.label_names,
                             cfg.data)
        dataset = (tf.data.Dataset.from_tensor_slices(windows.features())
                   .batch(cfg.trainer.batch_size).prefetch(tf.data.AUTOTUNE))
        hint = causes(cfg.optimizer.learning_rate, self.tokenizer.vocabulary_size())
        return EntityEvaluation(dataset, windows, [list(s.tags) for s in self.eval_sentences],
                                self.task, tagger_loss(), cfg.trainer.on_collapse, hint,
                                self.extra_metrics)

    def export(self, model: keras.Model, layout: RunLayout) -> Path:
        """Preset, `.keras`, SavedModel (raw strings to per-piece tags) and `export/hf`."""
        samples = [" ".join(s.tokens) for s in self.eval_sentences[:SAMPLE_PREDICTIONS]]
        return export_run(inference_copy(model), self.preprocessor, layout.root,
                          self.task.label_names,
                          np.array(samples, dtype=object))
