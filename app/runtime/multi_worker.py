"""Workarounds that let Keras' `fit` train under MultiWorkerMirroredStrategy.

Written for keras 3.15.1 (multi-worker on Keras 3 is open upstream: keras-team/keras#20585).
Two spots fail with keras-hub models on 2+ workers:
1. `_maybe_symbolic_build` reduces the first distributed batch with a MEAN across workers
   ("Attempt to convert a value ({'token_ids': PerReplica..."); building from one replica's
   batch gives the same shapes without a collective.
2. `reduce_per_replica` reduces every logged value with `axis=0`, which fails on the scalar
   metric values ("Invalid reduction dimension 0 for input with 0 dimensions"); scalars are
   reduced with `axis=None`.
"""

import logging

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

log = logging.getLogger(__name__)

WRITTEN_FOR_KERAS = "3.15.1"
_original_reduce_per_replica = tf_trainer.reduce_per_replica


def _build_from_one_replica(self, iterator=None, data_batch=None):
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tree.map_structure(
                lambda x: self.distribute_strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues) else x,
                batch,
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction):
    if reduction not in ("auto", "mean") or not tf_trainer._collective_all_reduce_multi_worker(
        strategy
    ):
        return _original_reduce_per_replica(values, strategy, reduction)

    def reduce(value):
        first = value.values[0] if isinstance(value, tf.distribute.DistributedValues) else value
        return strategy.reduce("MEAN", value, axis=None if first.shape.rank == 0 else 0)

    return tree.map_structure(reduce, values)


def patch_keras_for_multi_worker() -> None:
    """Apply both workarounds (idempotent); warns when Keras is not the version they target."""
    if keras.__version__ != WRITTEN_FOR_KERAS:
        log.warning("Multi-worker workarounds were written for keras %s, running %s",
                    WRITTEN_FOR_KERAS, keras.__version__)
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _build_from_one_replica
    tf_trainer.reduce_per_replica = _reduce_per_replica
