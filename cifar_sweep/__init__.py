"""cifar_sweep: run, track and rank image-classification experiments on CIFAR-10.

Kept import-light on purpose: `cifar_sweep.commands.leaderboard` must not pull in torch.
"""

__version__ = "0.1.0"
