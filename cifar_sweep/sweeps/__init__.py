"""Sweep machinery: the Hydra callback, job records, the skip rule, dry run, pruning, GPU slots."""
