# Makes conf/ the package `cifar_sweep.conf` (see pyproject.toml), so Hydra finds the configs
# as pkg://cifar_sweep.conf in a checkout and in an installed wheel alike.
