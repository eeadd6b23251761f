"""Pretraining (`data.task=pretraining`): corpus -> tokenizer -> masked pipelines -> MLM+SOP model.

app.train fits the returned job like any other, so a pretraining run follows the same
run-folder contract as fine-tuning (checkpoints, resume, TensorBoard, metrics.json, export/).
"""

import logging
import math
from functools import partial
from pathlib import Path

import sentencepiece
import tensorflow as tf
from omegaconf import DictConfig

from app.callbacks import CompiledEvaluation
from app.data.pipeline import epoch_stream
from app.errors import DataError
from app.job import TrainingJob
from app.models.classifier import build_backbone
from app.optim import build_optimizer
from app.pretraining.corpus import expand_files
from app.pretraining.masking import NGramMasker
from app.pretraining.model import (
    AlbertPretrainer,
    export_preset,
    pretraining_losses,
    pretraining_metrics,
)
from app.pretraining.pipeline import (
    corpus_documents,
    corpus_sentences,
    masked_eval_batches,
    pretraining_examples,
    special_ids,
)
from app.pretraining.sentence_order import order_and_mask
from app.tokenizer import build_tokenizer

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
    """Train and eval examples (packed, unmasked) and their counts, from the `data` config."""
    data = cfg.data
    train_files, eval_files = _corpus_files(data)
    if eval_files is None:  # evaluate on every k-th training document, held out
        train_documents = partial(corpus_documents, train_files, data, holdout=False)
        eval_documents = partial(corpus_documents, train_files, data, holdout=True)
    else:
        train_documents = partial(corpus_documents, train_files, data)
        eval_documents = partial(corpus_documents, eval_files, data)

    train, num_train = pretraining_examples(
        train_documents, processor, data, cfg.seed, max_examples=data.max_train_examples,
        description=f"training corpus ({data.train_file})")
    evaluation, num_eval = pretraining_examples(
        eval_documents, processor, data, cfg.seed, max_examples=data.max_eval_examples,
        description=f"eval corpus ({data.eval_file or 'held-out training documents'})")
    return train, num_train, evaluation, num_eval


def build_pretraining(
    cfg: DictConfig, run_dir: Path, strategy: tf.distribute.Strategy
) -> TrainingJob:
    """Read the corpus, build the tokenizer, the masked pipelines and the MLM+SOP model.

    Args:
        cfg: the composed config, `data.task=pretraining`.
        run_dir: this run's folder.
        strategy: the distribution strategy (built, with seeds set, by the caller).
    """
    train_files, _ = _corpus_files(cfg.data)
    if next(corpus_sentences(train_files, cfg.data), None) is None:
        raise DataError(f"The training corpus has no text: `data.train_file` "
                        f"{cfg.data.train_file!r} matches {[str(f) for f in train_files]}, which "
                        f"contain no sentence; expected UTF-8 text files with documents")
    tokenizer = build_tokenizer(cfg, corpus_sentences(train_files, cfg.data), run_dir / "tokenizer")
    log.info("Tokenizer: %d pieces", tokenizer.vocabulary_size())
    processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.proto)
    special_ids(processor, "the run's tokenizer")
    masker = build_masker(tokenizer, cfg.data)
    train, num_train, evaluation, num_eval = _examples(cfg, processor)
    log.info("Pretraining on %d examples, evaluating on %d", num_train, num_eval)
    batch_size = cfg.trainer.batch_size
    batches = epoch_stream(train, num_train, batch_size, cfg.data.shuffle_buffer, cfg.seed,
                           cfg.trainer.epochs, per_example=order_and_mask(masker))
    steps_per_epoch = math.ceil(num_train / batch_size)

    with strategy.scope():
        model = AlbertPretrainer(build_backbone(cfg.model, tokenizer.vocabulary_size()))
        model.compile(
            optimizer=build_optimizer(cfg.optimizer, steps_per_epoch * cfg.trainer.epochs,
                                      cfg.trainer.gradient_accumulation_steps),
            loss=pretraining_losses(),
            **pretraining_metrics(),
            jit_compile=cfg.trainer.jit_compile,
            steps_per_execution=cfg.trainer.steps_per_execution,
        )
    evaluator = CompiledEvaluation(masked_eval_batches(evaluation, masker, batch_size, cfg.seed))

    def export(run_dir: Path) -> None:
        with strategy.scope():
            export_preset(model, tokenizer, masker, cfg.data.sequence_length,
                          run_dir / "export" / "preset")
        model.save(run_dir / "export" / "model.keras")

    return TrainingJob(model, batches, num_train, steps_per_epoch, evaluator, export,
                       extra_metrics={"initial": evaluator.evaluate(model),
                                      "train_examples": num_train, "eval_examples": num_eval})
