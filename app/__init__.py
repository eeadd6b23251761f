"""albert-trainer: train ALBERT language models with Keras and keras-hub, driven by Hydra."""
