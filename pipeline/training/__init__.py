"""Training data (DATASET.yaml, chips, sampling) and the training loop."""
