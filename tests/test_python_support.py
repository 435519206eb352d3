"""Python versions the pinned Hydra cannot start on are refused up front, in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from packaging.specifiers import SpecifierSet

from cifar_sweep.python_support import FIRST_UNSUPPORTED, unsupported_python_message
from helpers import REPO


def test_pip_refuses_the_first_python_hydra_cannot_start_on():
    spec = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    first = ".".join(map(str, FIRST_UNSUPPORTED))
    assert f"{first}.0" not in spec
    assert "3.13.5" in spec and "3.11.9" in spec


def test_supported_versions_pass_and_newer_ones_get_the_cause_and_the_fix():
    assert unsupported_python_message((3, 11, 9)) is None
    message = unsupported_python_message((3, 14, 0))
    assert "Python 3.14" in message and "hydra" in message and "3.13" in message
    assert "\n" not in message


def test_cifar_sweep_on_python_3_14_says_so_in_one_line_instead_of_a_traceback():
    # Once imported (libraries check the version as they load), the interpreter claims to be 3.14:
    # the entry point must stop before Hydra builds its parser.
    code = ("import sys; from cifar_sweep.train import cli;"
            "sys.version_info = (3, 14, 0, 'final', 0); sys.argv = ['cifar-sweep']; cli()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("cifar-sweep: Python 3.14 is not supported yet"), done.stderr
