"""The pipeline stages over plain tensors and files: train, predict, evaluate (with their loss,
metrics, quality score and the multi-process helpers)."""
