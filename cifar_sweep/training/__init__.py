"""Torch library of one run, free of Hydra and MLflow: engine, optimizers, schedules, weight
averages, checkpoints with the resume policy, device choices."""
