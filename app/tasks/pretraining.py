"""Pretraining (`data.task=pretraining`): corpus -> tokenizer -> masked pipelines -> MLM+SOP model.

app.train walks these steps like fine-tuning's, so a pretraining run follows the same
run-folder contract (checkpoints, resume, TensorBoard, metrics.json, export/).
"""

import logging
import math
from functools import partial
from pathlib import Path

import keras
import keras_hub
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from app.data.pipeline import epoch_stream
from app.data.pretraining.corpus import expand_files
from app.data.pretraining.masking import NGramMasker
from app.data.pretraining.pipeline import (
    CorpusStats,
    corpus_documents,
    corpus_sentences,
    masked_eval_batches,
    pretraining_examples,
    special_ids,
)
from app.data.pretraining.sentence_order import (
    SOP_SUBSETS,
    count_pair_kinds,
    order_and_mask,
    pair_kinds,
)
from app.data.pretraining.shards import (
    check_run_source,
    eval_batches,
    eval_examples,
    open_prepared,
    pipeline_steps,
    pipeline_stream,
)
from app.data.pretraining.signal import corpus_signal, masking_stats, report_signal
from app.errors import DataError
from app.models.backbone import build_backbone, check_sequence_length, load_preset_heads
from app.models.lora import inference_copy
from app.models.pretrainer import (
    AlbertPretrainer,
    export_preset,
    pretraining_losses,
    pretraining_metrics,
)
from app.runs.layout import RunLayout
from app.runs.transformers_export import export_transformers
from app.runtime.cluster import cluster_workers
from app.tasks.base import TrainingData, compile_for_training
from app.tasks.tokenizer import build_tokenizer, token_encoder
from app.training.callbacks import CompiledEvaluation

log = logging.getLogger(__name__)


def _corpus_files(data: DictConfig) -> tuple[list[Path], list[Path] | None]:
    train_files = expand_files(data.dir, data.train_file, "data.train_file")
    if not data.eval_file:
        return train_files, None
    return train_files, expand_files(data.dir, data.eval_file, "data.eval_file")


def build_masker(tokenizer, data: DictConfig) -> NGramMasker:
    """The n-gram masker for a tokenizer's vocabulary and the `data` masking settings."""
    return NGramMasker(tokenizer.get_vocabulary(), masked_lm_prob=data.masked_lm_prob,
                       max_predictions=data.max_predictions, max_ngram=data.max_ngram)


def _examples(cfg: DictConfig, processor) -> tuple:
    """Train and eval examples (packed, unmasked) and their counts, and what reading the
    training corpus saw, from the `data` config."""
    data = cfg.data
    train_files, eval_files = _corpus_files(data)
    if eval_files is None:  # evaluate on every k-th training document, held out
        train_documents = partial(corpus_documents, train_files, data, holdout=False)
        eval_documents = partial(corpus_documents, train_files, data, holdout=True)
    else:
        train_documents = partial(corpus_documents, train_files, data)
        eval_documents = partial(corpus_documents, eval_files, data)

    train_stats = CorpusStats()
    train, num_train = pretraining_examples(
        train_documents, processor, data, cfg.seed, max_examples=data.max_train_examples,
        description=f"training corpus ({data.train_file})", stats=train_stats)
    evaluation, num_eval = pretraining_examples(
        eval_documents, processor, data, cfg.seed, max_examples=data.max_eval_examples,
        description=f"eval corpus ({data.eval_file or 'held-out training documents'})")
    return train, num_train, train_stats, evaluation, num_eval


class PretrainingEvaluation(CompiledEvaluation):
    """The compiled metrics, plus SOP accuracy on each kind of pair: `val_sop_accuracy_whole`
    (consecutive whole sentences), `_trimmed` (a sentence cut) and `_random_next` (B from
    another document); NaN for a kind the eval set lacks.

    Args:
        batches: the eval batches, (x, y, sample weights).
        kinds: batches of `pair_kinds` aligned with `batches`.
    """

    def __init__(self, batches: tf.data.Dataset, kinds: tf.data.Dataset):
        super().__init__(batches)
        self.kinds = kinds
        self.pair_counts: dict[str, int] = {}  # eval pairs of each kind, once evaluated
        self._model = self._sop_logits = None

    def evaluate(self, model: keras.Model) -> dict[str, float]:
        """`val_*` metrics of `model`; the SOP subsets are counted on this process's devices,
        outside the distribution strategy (the eval set in full on every worker)."""
        results = super().evaluate(model)
        if self._model is not model:
            self._model = model
            self._sop_logits = tf.function(lambda x: model(x, training=False)["sop"])
        correct, total = dict.fromkeys(SOP_SUBSETS, 0), dict.fromkeys(SOP_SUBSETS, 0)
        for (x, y, _), kinds in tf.data.Dataset.zip(self.dataset, self.kinds):
            right = tf.argmax(self._sop_logits(x), axis=-1, output_type=tf.int32) == y["sop"]
            for kind in SOP_SUBSETS:
                correct[kind] += int(tf.math.count_nonzero(right & kinds[kind]))
                total[kind] += int(tf.math.count_nonzero(kinds[kind]))
        self.pair_counts = total
        return {**results, **{f"val_sop_accuracy_{kind}":
                              correct[kind] / total[kind] if total[kind] else math.nan
                              for kind in SOP_SUBSETS}}


class Pretraining:
    """Text corpus -> tokenizer -> packed sentence pairs, masked per epoch -> MLM + SOP model.

    Args:
        cfg: the composed run config, `data.task=pretraining`.
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.extra_metrics: dict = {}

    def read_data(self, layout: RunLayout) -> None:
        """Find the corpus files; a corpus without a sentence fails here, before any work."""
        data = self.cfg.data
        if data.prepared:  # checked up front: manifest, tokenizer file, shard sizes and hashes
            self.corpus = open_prepared(data.prepared, data.sequence_length, data.verify_shards)
            # Where the run records its corpus: a resumed non-chief worker reads the chief's.
            self.run_dir = Path(self.cfg.resume) if self.cfg.resume else layout.root
            return
        self.train_files, _ = _corpus_files(data)
        if next(corpus_sentences(self.train_files, data), None) is None:
            raise DataError(f"The training corpus has no text: `data.train_file` "
                            f"{data.train_file!r} matches {[str(f) for f in self.train_files]}, "
                            f"which contain no sentence; expected UTF-8 text files with documents")

    def build_tokenizer(self, layout: RunLayout) -> keras_hub.models.AlbertTokenizer:
        """The run's tokenizer (trained on the corpus unless given) and the n-gram masker."""
        if self.cfg.data.prepared:  # the prepared folder's, or the same one given elsewhere
            proto = self.cfg.tokenizer.proto or str(self.corpus.tokenizer_path)
            cfg = OmegaConf.merge(self.cfg, {"tokenizer": {"proto": proto}})
            self.tokenizer = build_tokenizer(cfg, [], layout.tokenizer_dir)
            self.corpus.check_tokenizer(self.tokenizer.proto, f"`tokenizer.proto` "
                                        f"{cfg.tokenizer.proto!r} or `model.preset`")
        else:
            sentences = corpus_sentences(self.train_files, self.cfg.data)
            self.tokenizer = build_tokenizer(self.cfg, sentences, layout.tokenizer_dir)
        self.processor = token_encoder(self.tokenizer)
        special_ids(self.processor, "the run's tokenizer")
        self.masker = build_masker(self.tokenizer, self.cfg.data)
        self.transform = order_and_mask(self.masker, self.cfg.data.random_b_sop_weight)
        return self.tokenizer

    def build_pipelines(self, strategy: tf.distribute.Strategy) -> TrainingData:
        """Read, tokenize and pack the corpus once (cached); order and masks drawn per epoch.
        A prepared corpus streams its shards (on several workers, each its own)."""
        cfg = self.cfg
        if cfg.data.prepared:
            return self._prepared_pipelines(strategy)
        train, num_train, stats, self.eval_examples, num_eval = _examples(cfg, self.processor)
        log.info("Pretraining on %d examples, evaluating on %d", num_train, num_eval)
        pairs = count_pair_kinds(train)
        signal = corpus_signal(stats.documents, stats.sentences, stats.multi_sentence_documents,
                               num_train, pairs, masking_stats(self.masker, train, cfg.seed))
        report_signal(signal, "Training corpus")
        self.extra_metrics.update(train_examples=num_train, eval_examples=num_eval,
                                  train_pairs=pairs, train_signal=signal)
        batches = epoch_stream(train, num_train, cfg.trainer.batch_size, cfg.data.shuffle_buffer,
                               cfg.seed, cfg.trainer.epochs,
                               per_example=self.transform)
        self.data = TrainingData(batches, num_train, math.ceil(num_train / cfg.trainer.batch_size))
        return self.data

    def _prepared_pipelines(self, strategy: tf.distribute.Strategy) -> TrainingData:
        """Stream the prepared shards (see app.data.pretraining.shards); sentence order and
        masks drawn per example from (seed, epoch, example id). Under
        MultiWorkerMirroredStrategy every worker streams its own shards."""
        cfg = self.cfg
        epochs = cfg.trainer.epochs
        stream = partial(pipeline_stream, self.corpus, cfg.trainer.batch_size,
                         cfg.data.shuffle_buffer, cfg.data.shard_group_size, cfg.seed,
                         self.transform)
        examples, num_eval = eval_examples(self.corpus)
        self.eval_examples = examples.map(lambda example_id, features: features)
        self.eval_batches = eval_batches(examples, self.transform,
                                         cfg.trainer.batch_size, cfg.seed)
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            workers, replicas = cluster_workers(), strategy.num_replicas_in_sync
            steps = pipeline_steps(self.corpus, cfg.trainer.batch_size, workers)
            local = replicas // workers  # each global step takes `local` batches of a pipeline

            def batches(start: int):
                return strategy.distribute_datasets_from_function(
                    lambda context: stream(context)(start * local, epochs))

            num_train, shards = steps * cfg.trainer.batch_size, len(self.corpus.shards("train"))
            log.info("Pretraining on %d workers, each streaming its own of %d prepared shards "
                     "(%d examples an epoch in all)", workers, shards, num_train)
        else:
            single = stream()
            steps, num_train = single.steps_per_epoch, int(single.counts.sum())

            def batches(start: int):
                return single(start, epochs)

            log.info("Pretraining on %d prepared examples in %d shards (groups of %d)",
                     num_train, len(single.paths), single.group_size)
        log.info("Evaluating on %d prepared examples", num_eval)
        self.extra_metrics.update(train_examples=num_train, eval_examples=num_eval)
        self.data = TrainingData(batches, num_train, steps)
        return self.data

    def build_model(self) -> keras.Model:
        """The compiled AlbertPretrainer; call under the strategy's scope."""
        cfg = self.cfg
        if cfg.data.prepared:  # a resume: the corpus and worker count the run started with
            check_run_source(self.run_dir, self.corpus, max(1, cluster_workers()),
                             bool(cfg.resume))
        model = AlbertPretrainer(build_backbone(cfg.model, self.tokenizer.vocabulary_size()))
        load_preset_heads(model, cfg.model)
        check_sequence_length(model.backbone, cfg.data.sequence_length)
        return compile_for_training(model, cfg, self.data.steps_per_epoch,
                                    loss=pretraining_losses(), **pretraining_metrics())

    def build_evaluation(self, model: keras.Model) -> PretrainingEvaluation:
        """MLM and SOP metrics on fixed masks after every epoch; also records them before."""
        batch_size = self.cfg.trainer.batch_size
        batches = (self.eval_batches if self.cfg.data.prepared else
                   masked_eval_batches(self.eval_examples, self.transform, batch_size,
                                       self.cfg.seed))
        evaluation = PretrainingEvaluation(batches,
                                           self.eval_examples.map(pair_kinds).batch(batch_size))
        self.extra_metrics["initial"] = evaluation.evaluate(model)
        self.extra_metrics["eval_pairs"] = evaluation.pair_counts
        log.info("Eval pair kinds (whole / trimmed / random B): %s", evaluation.pair_counts)
        return evaluation

    def export(self, model: keras.Model, layout: RunLayout) -> Path:
        """An `AlbertMaskedLM` preset (with tokenizer), the MLM+SOP model as `.keras` and as
        transformers' `AlbertForPreTraining` (`export/hf`)."""
        model = inference_copy(model)
        export_preset(model, self.tokenizer, layout.preset, self.cfg.data.sequence_length,
                      self.masker.masked_lm_prob, self.masker.max_predictions)
        model.save(layout.model)
        export_transformers(model, self.tokenizer, layout.transformers,
                            self.cfg.data.sequence_length)
        return layout.export
