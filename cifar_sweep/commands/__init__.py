"""The console scripts. Torch-free except those that rebuild a model (still-wrong, featuremaps)."""
