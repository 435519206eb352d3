"""The composed config's side of the house, torch-free: schemas (Hydra ConfigStore dataclasses), the
rules a config must pass before anything starts, project paths, and what identifies a run."""
