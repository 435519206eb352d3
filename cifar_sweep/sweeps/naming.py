"""How the runs of a sweep are told apart: the sweep's short name, and what differs between its jobs.

Both are read from the sweep folder, which every launcher's jobs can reach: a job's own Hydra config
holds only its own overrides (`a=1`), while the config the sweeper saved there (`multirun.yaml`)
holds the sweep as it was asked for (`a=1,2`, `hydra.sweeper.params`).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

SWEEPS_FOLDER = "multirun"  # where train.yaml puts sweep folders: runs/multirun/<date>/<time>


def sweep_label(sweep_dir: str | os.PathLike) -> str:
    """A short readable name of the sweep (its runs' `sweep` tag, a column of the UI's leaderboard):
    when it started, `12-04 03:41:07`, for a folder of train.yaml's `multirun/<date>/<time>`; else
    the folder below `multirun/`, else the folder's own name. Short enough to show whole in a narrow
    column; the `sweep_id` tag keeps the whole path."""
    parts = Path(sweep_dir).parts
    try:
        started = datetime.strptime("/".join(parts[-2:]), "%Y-%m-%d/%H-%M-%S")
    except ValueError:
        started = None
    if started is not None:
        return started.strftime("%m-%d %H:%M:%S")
    if SWEEPS_FOLDER in parts[:-1]:
        return "/".join(parts[len(parts) - parts[::-1].index(SWEEPS_FOLDER):])
    return Path(sweep_dir).name


def varying_keys(sweep_dir: str | os.PathLike) -> tuple[str, ...]:
    """The override keys whose value differs between the sweep's jobs (`optimizer.lr`, `model`,
    `seed`), in the order the sweep names them: the sweeps of its command line and of
    `hydra.sweeper.params`. () when the saved config cannot be read: a run's name is never worth
    failing it for."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        saved = OmegaConf.load(Path(sweep_dir) / "multirun.yaml")
        lines = [str(o) for o in (OmegaConf.select(saved, "hydra.overrides.task") or [])]
        params = OmegaConf.select(saved, "hydra.sweeper.params") or {}
        lines += [f"{key}={value}" for key, value in params.items()]
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception:  # noqa: BLE001  a missing, partly written or foreign file: no sweep keys
        return ()
    return tuple(dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override()))
