"""Training: data sets by name, safe checkpoints with full resume state, and the training loop."""
