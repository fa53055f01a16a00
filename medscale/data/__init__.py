"""Data path: source formats -> chat messages -> rendered, loss-masked token ids -> batches."""
