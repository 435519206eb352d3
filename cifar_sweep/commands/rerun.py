"""`cifar-rerun RUN [key=value ...]`: train a logged run's config again, as a new run.

The run's `config.yaml` artifact (its resolved config) becomes a plain `cifar-sweep` command line:
the run's group choices (its `model`, `optimizer`, `schedule`, `data`, `experiment_preset` tags) and
a `key=value` for every value that differs from what those choices compose to today. Before
anything starts, that line is composed here exactly as `cifar-sweep` will compose it and compared
with the logged config key by key: a rerun trains the config the run trained, or does not start.
The line is an ordinary command (it is also the new run's `command` tag), so it outlives any temp
folder and can be copied, edited, or run on another machine.

Keys the run logged that today's config no longer has (a run of an older version) are refused in
one line naming them: the line would not compose, and silently dropping them would train another
config. Keys added since the run take today's defaults, and the command says which.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from cifar_sweep.commands import shell
from cifar_sweep.config.identity import flatten
from cifar_sweep.errors import CifarSweepError
from cifar_sweep.sweeps.records import RERUN_OF_ENV, command_line
from cifar_sweep.tracking import lookup

PROG = "cifar-rerun"
# The run's config groups and the tags training records their choices in.
GROUP_TAGS = {"model": "model", "optimizer": "optimizer", "schedule": "schedule", "data": "data",
              "experiment": "experiment_preset"}
# Where and how the run was stored and resumed, not what it trained: never copied from the old run.
# The new run lives in the store the old one was found in, under this machine's paths.
RUNTIME_KEYS = ("paths", "hydra", "tracking.uri", "resume")

EPILOG = """\
A rerun always trains a new run: it is started as a single cifar-sweep run (only sweep jobs are
ever skipped as "already done"), with resume=false so that a checkpoint an interrupted run of the
same config and seed left behind is not continued (pass resume=auto to continue it instead). The new
run carries the tag rerun_of=<RUN's id> and, like every run, its command line in the tag `command`.
Overrides are Hydra's key=value (optimizer.lr=0.01 seed=1 trainer.device=cuda); a group choice
(model=lenet) drops the old run's values of that group.
"""


class RerunRefused(CifarSweepError, ValueError):
    """A run that cannot be trained again as logged: printed in one line, exit status 2."""


# -- values as override text ----------------------------------------------------------------------


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types (1, 1.0 and True are three values to a config)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def override_value(value: Any) -> str:
    """`value` in Hydra's override grammar, read back as this very value (quoted only where needed)."""
    if isinstance(value, str):
        try:
            parsed = _parser().parse_override(f"k={value}")
            if not parsed.is_sweep_override() and _same(parsed.value(), value):
                return value
        except Exception:  # noqa: BLE001  anything the grammar rejects is quoted below
            pass
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${") + "'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    return override_value(str(value))


def _key_of(override: str) -> str:
    try:
        return _parser().parse_override(override).key_or_group
    except Exception:  # noqa: BLE001  Hydra reports the bad override itself when the run starts
        return override.split("=", 1)[0].lstrip("+~")


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


# -- composing ------------------------------------------------------------------------------------


def compose_flat(overrides: list[str]) -> dict[str, Any]:
    """The config `cifar-sweep OVERRIDES` composes, resolved and flattened (Hydra's own compose)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from cifar_sweep.config import paths, schema  # noqa: F401  schema registers the typed blocks

    paths.register_resolvers()
    try:
        with initialize_config_module(config_module="cifar_sweep.conf", version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # noqa: BLE001  Hydra's and the schema's errors are many types
        raise RerunRefused(f"today's config refuses the run's values: {shell.one_line(err)}") from None
    return flatten({k: v for k, v in resolved.items() if k not in ("paths", "hydra")})


def logged_config(client, run) -> dict[str, Any]:
    from omegaconf import OmegaConf

    text = lookup.read_text_or_none(client, run.info.run_id, "config.yaml")
    if text is None:
        raise RerunRefused(f"run {run.info.run_id[:8]} has no config.yaml artifact to rerun it from "
                           "(not a cifar-sweep run, or it failed before logging its config)")
    return flatten({k: v for k, v in OmegaConf.to_container(OmegaConf.create(text)).items()
                    if k not in ("paths", "hydra")})


def group_choices(tags: Mapping[str, str]) -> dict[str, str]:
    return {group: tags[tag] for group, tag in GROUP_TAGS.items() if tags.get(tag) not in (None, "", "None")}


def rerun_overrides(logged: Mapping[str, Any], tags: Mapping[str, str], user: list[str],
                    tracking_uri: str | None, run_label: str) -> tuple[list[str], list[str]]:
    """(the overrides that train `logged` again with the `user` overrides applied, keys new since).

    Raises RerunRefused naming the logged keys today's config lacks, or any key that would not come
    out as logged.
    """
    user_keys = [_key_of(o) for o in user]
    choices = group_choices(tags)
    for group in GROUP_TAGS:
        if group in user_keys:
            choices.pop(group, None)  # the user's pick replaces the run's
    picks = [f"{group}={override_value(choice)}" for group, choice in choices.items()]
    base = compose_flat(picks + [o for o in user if _key_of(o) in GROUP_TAGS])
    copied = {k: v for k, v in logged.items() if not _under(k, RUNTIME_KEYS) and not _under(k, user_keys)}

    gone = [k for k in copied if k not in base and not any(b.startswith(k + ".") for b in base)]
    if gone:
        raise RerunRefused(f"run {run_label} was logged by an older version: {', '.join(sorted(gone))} "
                           f"{'is' if len(gone) == 1 else 'are'} no longer in the config",
                           hint="; train it with today's keys (cifar-sweep --cfg job lists them)")
    derived = [f"{k}={override_value(v)}" for k, v in copied.items() if k not in base or not _same(base[k], v)]
    runtime = []
    if tracking_uri and not _same(base.get("tracking.uri"), tracking_uri):
        runtime.append(f"tracking.uri={override_value(tracking_uri)}")
    if "resume" not in user_keys:
        runtime.append("resume=false")
    overrides = picks + derived + runtime + list(user)

    composed = compose_flat(overrides)
    wrong = sorted(k for k, v in copied.items() if k not in composed or not _same(composed[k], v))
    if wrong:
        raise RerunRefused(f"the command for run {run_label} would not reproduce {', '.join(wrong[:8])}",
                           hint="; run cifar-sweep with the run's config by hand")
    new = sorted(k for k in composed if k not in logged and not _under(k, RUNTIME_KEYS) and not _under(k, user_keys))
    # Without its choice tag, a group composes to today's default option, whose keys the run never had.
    unknown = [g for g in GROUP_TAGS if g != "experiment" and g not in choices and g not in user_keys
               and any(_under(k, [g]) for k in new)]
    if unknown:
        raise RerunRefused(f"run {run_label} has no tag saying which {' or '.join(unknown)} option it used",
                           hint=f"; name it: {PROG} RUN {unknown[0]}=<option> (cifar-sweep --help lists them)")
    return overrides, new


# -- command --------------------------------------------------------------------------------------


def plan(client, ref: str, user: list[str], tracking_uri: str | None, where: str) -> tuple[Any, list[str], list[str]]:
    run = shell.resolve_run(client, ref, where)
    bad = [o for o in user if o.startswith("-") or ("=" not in o and not o.startswith("~"))]
    if bad:
        raise RerunRefused(f"{bad[0]!r} is not a key=value override",
                           hint="; a rerun is one run: give overrides like optimizer.lr=0.01 (no -m, no flags)")
    overrides, new = rerun_overrides(logged_config(client, run), run.data.tags, user, tracking_uri,
                                     run.info.run_id[:8])
    return run, overrides, new


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    from cifar_sweep.config.paths import default_tracking_uri
    from cifar_sweep.tracking.store import open_store

    p = argparse.ArgumentParser(
        prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a logged run's config again (its config.yaml, with your overrides) as a new run.",
    )
    p.add_argument("run", metavar="RUN", help="a run id or the start of one (the 8 characters summaries print)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the run's config")
    shell.add_store_options(p, experiment=False)
    p.add_argument("--dry-run", action="store_true", help="print the cifar-sweep command, run nothing")
    args = p.parse_intermixed_args(argv)  # options before, between or after the overrides
    uri = args.tracking_uri or default_tracking_uri()
    try:
        run, overrides, new = plan(open_store(args.tracking_uri), args.run, args.overrides, uri,
                                   args.tracking_uri or "this store")
    except CifarSweepError as err:  # the user's to fix: exit status 2, as for a bad argument
        print(f"{PROG}: {err.one_line()}", file=sys.stderr)
        return 2
    command = command_line(overrides)
    if new:
        print(f"{PROG}: keys new since run {run.info.run_id[:8]} take today's defaults: {', '.join(new)}",
              file=sys.stderr)
    if args.dry_run:
        print(command)
        return 0
    print(f"{PROG}: run {run.info.run_id[:8]} ({run.info.run_name}) again: {command}", file=sys.stderr, flush=True)
    env = {**os.environ, RERUN_OF_ENV: run.info.run_id}
    return subprocess.run([sys.executable, "-m", "cifar_sweep.train", *overrides], env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
