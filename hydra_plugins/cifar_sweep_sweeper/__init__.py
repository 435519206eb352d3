"""cifar_sweep's own Hydra sweepers (see sweepers.py)."""
