"""The sweep's early stop as an epoch hook: ask the pruner, and say on the run why it stopped.

Two kinds of pruner answer `should_stop(epoch, val_acc)`:
- `pruning.MedianPruner` reads the siblings' val_acc histories from the MLflow store;
- `OptunaPruner` (`halving`, `hyperband`) hands the decision to Optuna's own SuccessiveHalvingPruner
  or HyperbandPruner. Each job of the sweep is one trial of a study kept in an Optuna journal file in
  the sweep folder (`.cifar_sweep/pruning.journal`): every job reports its val_acc at each epoch
  there, and the pruner compares it with what the other jobs reported at the same rung. A journal
  file and its lock work from any process that sees the sweep folder (joblib, submitit, SLURM), as the
  job records do; it belongs to one launch, as the `sweep_id` the median pruner reads does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cifar_sweep.sweeps.records import state_dir

log = logging.getLogger("cifar_sweep")

PRUNING_JOURNAL = "pruning.journal"
PRUNING_STUDY = "pruning"
RUN_ID_ATTR = "run_id"  # trial user attr: the MLflow run the trial stands for (a resumed run continues it)
OPTUNA_PRUNERS = ("halving", "hyperband")


def make_pruner(sweep_dir, tracking_uri: str, run_id: str, sweep_id: str, settings, epochs: int):
    """The pruner `sweep.pruning` asks for, or None (`enabled=true` is the older spelling of median)."""
    from cifar_sweep.sweeps.pruning import MedianPruner

    kind = str(settings.pruner)
    if kind == "none" and settings.enabled:
        kind = "median"
    if kind == "median":
        return MedianPruner(tracking_uri, run_id, sweep_id, settings.after_epoch, settings.min_siblings)
    if kind in OPTUNA_PRUNERS:
        return OptunaPruner(str(state_dir(sweep_dir) / PRUNING_JOURNAL), run_id, kind, settings, epochs)
    return None


def optuna_pruner(kind: str, settings, epochs: int):
    """Optuna's pruner for `kind`, with the knobs of `sweep.pruning`."""
    import optuna

    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=int(settings.min_resource), reduction_factor=int(settings.reduction_factor),
            min_early_stopping_rate=int(settings.min_early_stopping_rate))
    # max_resource is the run's epochs: Optuna's "auto" would wait for a finished job to guess it.
    return optuna.pruners.HyperbandPruner(min_resource=int(settings.min_resource), max_resource=max(int(epochs), 1),
                                          reduction_factor=int(settings.reduction_factor))


@dataclass
class OptunaPruner:
    """One job as one trial of the sweep's pruning study; Optuna decides at each epoch."""

    journal: str
    run_id: str
    kind: str
    settings: object
    epochs: int
    reason: str = ""
    _study: object = field(default=None, repr=False)
    _trial: object = field(default=None, repr=False)

    def _open(self):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        if self._trial is not None:
            return self._trial
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created" for every job
        storage = JournalStorage(JournalFileBackend(self.journal))
        self._study = optuna.create_study(study_name=PRUNING_STUDY, storage=storage, direction="maximize",
                                          pruner=optuna_pruner(self.kind, self.settings, self.epochs),
                                          load_if_exists=True)
        running = self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        mine = [t for t in running if t.user_attrs.get(RUN_ID_ATTR) == self.run_id]
        if mine:  # a resumed run: its epochs so far are already reported
            self._trial = optuna.trial.Trial(self._study, mine[-1]._trial_id)
        else:
            self._trial = self._study.ask()
            self._trial.set_user_attr(RUN_ID_ATTR, self.run_id)
        return self._trial

    def should_stop(self, epoch: int, val_acc: float) -> bool:
        import optuna

        trial = self._open()
        trial.report(float(val_acc), int(epoch))
        if not trial.should_prune():
            return False
        rate = int(self.settings.reduction_factor)
        self.reason = (f"val_acc {val_acc:.4f} after epoch {epoch} is not in the top 1/{rate} of the sweep's jobs at "
                       f"that rung ({'successive halving' if self.kind == 'halving' else 'hyperband'})")
        self._study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return True

    def finished(self, epoch: int, val_acc: float) -> None:
        """The run's last epoch: reported (later jobs compare with it), and the trial complete."""
        trial = self._open()
        trial.report(float(val_acc), int(epoch))
        self._study.tell(trial, float(val_acc))

    @property
    def tags(self) -> dict:
        return {"pruned_by": self.kind, "pruned_reduction_factor": int(self.settings.reduction_factor)}


@dataclass
class PruneHook:
    pruner: object  # MedianPruner or OptunaPruner: should_stop(epoch, acc), finished(epoch, acc), reason, tags
    tracker: object
    epochs: int
    pruned_at: int | None = None

    def __call__(self, epoch: int, metrics: dict, result) -> bool:
        if epoch + 1 >= self.epochs:
            self.pruner.finished(epoch, result.acc)
            return False
        if not self.pruner.should_stop(epoch, result.acc):
            return False
        log.info("pruned: %s", self.pruner.reason)
        self.tracker.set_tags({"pruned": "true", "pruned_at_epoch": epoch, **self.pruner.tags})
        self.pruned_at = epoch
        return True
