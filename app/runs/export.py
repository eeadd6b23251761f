"""A finished run's exports: keras-hub preset, `.keras`, a SavedModel serving raw strings and
the transformers format."""

from pathlib import Path

import numpy as np

from app.runs.layout import LABELS_FILE, THRESHOLDS_FILE, RunLayout
from app.runs.record import write_json
from app.runs.serving import export_saved_model
from app.runs.transformers_export import export_transformers


def export_run(model, preprocessor, run_dir: Path, label_names, sample_inputs,
               thresholds: tuple[float, ...] | None = None) -> Path:
    """Export the trained task (an `app.models.lora.inference_copy`) with its preprocessor:
    keras-hub preset, `.keras`, SavedModel, transformers (`export/hf`). A multi-label model's
    `thresholds` (one per label) go into its SavedModel and beside its preset.

    The SavedModel's serving signature takes raw strings (see app.runs.serving). Also writes the
    label names beside the preset and the model's outputs on a few raw inputs
    (`sample_predictions.json`), so a reload can be checked against the run.
    """
    layout = RunLayout(run_dir)
    # The task's own preprocessor class (keras-hub's from_preset matches it to the backbone).
    preprocessor = model.preprocessor_cls(preprocessor.tokenizer,
                                          sequence_length=preprocessor.sequence_length)
    model.preprocessor = preprocessor
    model.save_to_preset(str(layout.preset))
    model.save(layout.model)
    write_json(layout.preset / LABELS_FILE, list(label_names))
    if thresholds is not None:
        write_json(layout.preset / THRESHOLDS_FILE,
                   dict(zip(label_names, map(float, thresholds), strict=True)))
    num_inputs = len(sample_inputs) if isinstance(sample_inputs, tuple) else 1
    export_saved_model(model, layout.saved_model, label_names, num_inputs, thresholds)
    export_transformers(model, preprocessor.tokenizer, layout.transformers,
                        preprocessor.sequence_length, list(label_names),
                        multilabel=thresholds is not None)
    outputs = model.predict(sample_inputs, verbose=0)
    inputs = [np.asarray(x).tolist() for x in
              (sample_inputs if isinstance(sample_inputs, tuple) else (sample_inputs,))]
    write_json(layout.sample_predictions,
               {"inputs": inputs, "outputs": np.asarray(outputs).tolist()})
    return layout.export

