"""The machine's description (training/machine.py): /proc/cpuinfo read without torch, one line for reports."""

from __future__ import annotations

import json
import subprocess
import sys

from cifar_sweep.training import machine

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni amx_tile_x

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2
"""


def test_the_first_processors_fields_are_read():
    fields = machine.parse_cpuinfo(CPUINFO)
    assert fields["vendor_id"] == "AuthenticAMD" and fields["model name"] == "AMD EPYC 9R14"
    assert fields["flags"].split() == ["fpu", "sse2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile_x"]
    assert machine.parse_cpuinfo("") == {}


def test_the_summary_line_names_the_matrix_flags_or_their_absence():
    info = {"cpu": "X", "cores": 2, "matrix_flags": ["avx512_bf16"], "memory_gib": 4.0, "torch": "2.0+cpu",
            "load_average_at_start": 0.5}
    assert machine.summary_line(info) == "X, 2 cores (avx512_bf16), 4.0 GiB; torch 2.0+cpu; load average 0.5 at start"
    assert "(no bf16/AMX flags)" in machine.summary_line(info | {"matrix_flags": []})


def test_this_machine_is_described_without_loading_torch():
    code = ("import sys, json; from cifar_sweep.training import machine; d = machine.describe(); "
            "print(json.dumps([d['torch'], set(d['matrix_flags']) <= machine.cpu_flags(), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import torch

    assert json.loads(out) == [torch.__version__, True, False]
