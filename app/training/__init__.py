"""Training: session, fit (signals, rollback), resume, callbacks, checkpoints, optimizers."""
