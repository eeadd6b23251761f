"""`albert-bench`: the app's training step against bare keras-hub, the pipeline, MFU."""
