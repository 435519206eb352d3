"""Hydra's own sweeper and launcher test suites against cifar_sweep's sweepers.

`hydra.test_utils.launcher_common_tests` is what Hydra runs against its basic sweeper and what
launcher plugins run against themselves: fixed example apps and configs (hydra/test_utils/configs),
exact job lists, job folders, config composition per job. Here `grid` (`hydra/sweeper=cifar_grid`, the
class behind conf/hydra/sweeper/grid.yaml) runs every suite with the basic and the joblib launchers.

`optuna` is adaptive: it adds its trial's parameters to every job, so the tests that expect a job
with no overrides, or exactly the cartesian product of the command line, cannot apply; each is
skipped with that reason. What applies runs as is: Hydra's refusal to sweep its own config, a bad
key failing the sweep, and the integration tests (job names, sweep folders, the original working
directory) with a one-parameter search space; `test_trials_compose_like_grid_jobs` is the adaptive
form of `test_sweep_and_override`.
"""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite
from hydra.test_utils.test_utils import verify_dir_outputs

LAUNCHERS = ["basic", "joblib"]
OPTUNA = ["hydra/sweeper=cifar_optuna", "hydra.sweeper.n_trials=2"]


@pytest.fixture(autouse=True)
def hydra_compat_version_base():
    """The suites' apps set no version_base, so Hydra treats them as 1.1 apps (each job in its own
    folder); but the version base is process-wide, and any test that composed cifar_sweep's config
    (version_base="1.3") first would leave it at 1.3. Each test here runs as in Hydra's own suite."""
    from hydra.version import VersionBase, __compat_version__

    base = VersionBase.instance()
    before = base.version_base
    base.setbase(__compat_version__)
    yield
    base.version_base = before


class TestGridSweeperLaunchers(LauncherTestSuite):
    @pytest.fixture(params=LAUNCHERS)
    def launcher_name(self, request) -> str:
        return request.param

    @pytest.fixture
    def overrides(self) -> list[str]:  # a fresh list: the suite's helpers extend it in place
        return ["hydra/sweeper=cifar_grid"]


class TestGridSweeperBatches(BatchedSweeperTestSuite):
    @pytest.fixture(params=LAUNCHERS)
    def launcher_name(self, request) -> str:
        return request.param

    @pytest.fixture
    def overrides(self) -> list[str]:
        return ["hydra/sweeper=cifar_grid", "hydra.sweeper.max_batch_size=2"]


@pytest.mark.cli  # each case runs an example Hydra app with this sweeper in a subprocess
class TestGridSweeperIntegration(IntegrationTestSuite):
    """Each case starts a Hydra app in a subprocess; with joblib its workers too (slow)."""

    @pytest.fixture(params=["basic", pytest.param("joblib", marks=pytest.mark.slow)])
    def extra_flags(self, request) -> list[str]:
        return ["-m", f"hydra/launcher={request.param}", "hydra/sweeper=cifar_grid"]

    @pytest.fixture
    def task_launcher_cfg(self) -> dict:
        return {}


NOT_ADAPTIVE = ("expects the job's overrides to be exactly the command line's (a job with none, or the cartesian "
                "product); an optuna trial adds its own parameters, and the adaptive analog is "
                "test_trials_compose_like_grid_jobs")


class TestOptunaSweeperLaunchers(LauncherTestSuite):
    @pytest.fixture(params=LAUNCHERS)
    def launcher_name(self, request) -> str:
        return request.param

    @pytest.fixture
    def overrides(self) -> list[str]:
        return [*OPTUNA, "+x=range(0,3)"]

    # Run as is: test_not_sweeping_hydra_overrides, test_sweep_1_job_strict_and_bad_key (every
    # trial fails on the bad key, and without cifar_sweep's callback the sweep raises the error).

    @pytest.mark.skip(reason=NOT_ADAPTIVE)
    def test_sweep_1_job(self):
        pass

    @pytest.mark.skip(reason=NOT_ADAPTIVE)
    def test_sweep_1_job_strict(self):
        pass

    @pytest.mark.skip(reason=NOT_ADAPTIVE)
    def test_sweep_2_jobs(self):
        pass

    @pytest.mark.skip(reason=NOT_ADAPTIVE)
    def test_sweep_2_optimizers(self):
        pass

    @pytest.mark.skip(reason=NOT_ADAPTIVE)
    def test_sweep_over_unspecified_mandatory_default(self):
        pass

    @pytest.mark.skip(reason=NOT_ADAPTIVE)
    def test_sweep_and_override(self):
        pass

    @pytest.mark.skip(reason=NOT_ADAPTIVE)
    def test_sweep_with_custom_resolver(self):
        pass

    def test_trials_compose_like_grid_jobs(self, hydra_sweep_runner, launcher_name, tmpdir):
        """test_sweep_and_override, adaptive: a config group searched, an override that exists only once
        the group's option is merged, each trial composed and run in its own folder."""
        expected = {
            "mysql": {"db": {"driver": "mysql", "password": "secret", "user": "someone"}},
            "postgresql": {"db": {"driver": "postgresql", "password": "drowssap", "timeout": 10, "user": "someone"}},
        }
        sweep = hydra_sweep_runner(
            calling_file=None, calling_module="hydra.test_utils.a_module", task_function=None,
            config_path="configs", config_name="db_conf.yaml", temp_dir=tmpdir,
            overrides=[f"hydra/launcher={launcher_name}", "hydra/sweeper=cifar_optuna", "hydra.sweeper.n_trials=4",
                       "hydra.sweeper.n_jobs=2", "db=mysql,postgresql", "db.user=someone"],
        )
        with sweep:
            jobs = [job for batch in sweep.returns for job in batch]
            assert [len(batch) for batch in sweep.returns] == [2, 2]
            for job in jobs:
                assert job.overrides[0] == "db.user=someone" and job.overrides[1] in ("db=mysql", "db=postgresql")
                assert job.cfg == expected[job.overrides[1].split("=")[1]]
                assert job.return_value == 100
                verify_dir_outputs(job, job.overrides)
            assert len({job.working_dir for job in jobs}) == 4


@pytest.mark.cli
@pytest.mark.slow  # a subprocess per case (~20 s together); the grid's basic-launcher run covers the same paths
class TestOptunaSweeperIntegration(IntegrationTestSuite):
    @pytest.fixture(params=["basic", "joblib"])
    def extra_flags(self, request) -> list[str]:
        return ["-m", f"hydra/launcher={request.param}", "hydra/sweeper=cifar_optuna", "hydra.sweeper.n_trials=1",
                "+x=range(0,3)"]

    @pytest.fixture
    def task_launcher_cfg(self) -> dict:
        return {}

    @pytest.fixture(autouse=True)
    def _not_with_a_trial_in_the_folder_name(self, request):
        case = getattr(request.node, "callspec", None)
        if case is not None and "override_dirname" in case.id:
            pytest.skip("the folder is named by the job's overrides, and a trial's include its parameter (x=...)")


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_the_suites_run_cifar_sweeps_grid_sweeper(hydra_sweep_runner, tmpdir):
    """The grid suites would pass against Hydra's basic sweeper too; this is what only ours does: a
    failed job does not stop the later batches, and the error is still raised at the end."""
    ran = []

    def task(cfg):
        ran.append(cfg.bar)
        if cfg.bar == 100:
            raise RuntimeError("job bar=100 failed")
        return cfg.bar

    sweep = hydra_sweep_runner(
        calling_file=None, calling_module="hydra.test_utils.a_module", task_function=task,
        config_path="configs", config_name="compose.yaml", temp_dir=tmpdir,
        overrides=["hydra/sweeper=cifar_grid", "hydra.sweeper.max_batch_size=1", "bar=100,200,300"],
    )
    with pytest.raises(RuntimeError, match="job bar=100 failed"):
        with sweep:
            pass
    assert ran == [100, 200, 300]
