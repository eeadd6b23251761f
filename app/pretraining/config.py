"""Validation of the `data` config of a pretraining run (called by app.config.validate)."""

import re
from pathlib import Path

from omegaconf import DictConfig

from app.config import _check, _check_at_least
from app.pretraining.corpus import expand_files


def _check_regex(key: str, pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as error:
        _check(False, f"`{key}` is not a valid regular expression ({error}). "
                      f"Received: {pattern!r}")


def validate_pretraining_data(data: DictConfig) -> None:
    """Check the corpus files and masking settings; raise ConfigError naming the key."""
    _check(Path(data.dir).is_dir(), f"`data.dir` does not exist. Received: '{data.dir}'")
    expand_files(data.dir, data.train_file, "data.train_file")
    if data.eval_file:
        expand_files(data.dir, data.eval_file, "data.eval_file")
    else:
        _check(0.0 < data.eval_fraction < 1.0,
               f"`data.eval_fraction` must be in (0, 1) when `data.eval_file` is null "
               f"(the held-out share of documents). Received: {data.eval_fraction}")
    _check_at_least("data.sequence_length", data.sequence_length, 8)
    _check_at_least("data.max_predictions", data.max_predictions, 1)
    _check_at_least("data.max_ngram", data.max_ngram, 1)
    _check_at_least("data.max_train_examples", data.max_train_examples, 1)
    _check_at_least("data.max_eval_examples", data.max_eval_examples, 1)
    _check_at_least("data.shuffle_buffer", data.shuffle_buffer, 1)
    _check(0.0 < data.masked_lm_prob < 1.0,
           f"`data.masked_lm_prob` must be in (0, 1). Received: {data.masked_lm_prob}")
    _check(0.0 <= data.short_seq_prob <= 1.0,
           f"`data.short_seq_prob` must be in [0, 1]. Received: {data.short_seq_prob}")
    _check(data.max_predictions <= data.sequence_length,
           f"`data.max_predictions` must be <= `data.sequence_length` "
           f"({data.sequence_length}). Received: {data.max_predictions}")
    _check_regex("data.document_pattern", data.document_pattern)
    _check_regex("data.skip_pattern", data.skip_pattern)
