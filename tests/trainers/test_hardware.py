"""The bf16 check: a CPU without bf16 units is read from its feature flags, and a bf16 CPU run warns."""

from __future__ import annotations

import warnings

import pytest
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.trainers import LenVMConfig, LenVMTrainer, hardware

X86_PLAIN = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Write a /proc/cpuinfo of one's choice and point the check at it."""
    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(hardware, "CPUINFO", path)
    return path


@pytest.mark.parametrize("text, expected", [
    (X86_PLAIN, False),
    (X86_PLAIN.replace("avx512bw", "avx512bw avx512_bf16"), True),  # Cooper Lake, Zen 4
    (X86_PLAIN.replace("avx512bw", "amx_tile amx_bf16"), True),  # Sapphire Rapids
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm (Graviton 3)
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
    ("processor\t: 0\n", None),  # no flags listed
])
def test_bf16_units_are_read_from_the_cpu_flags(cpuinfo, text, expected):
    cpuinfo.write_text(text)
    assert hardware.cpu_has_bf16_units() is expected


def test_unreadable_flags_are_unknown(cpuinfo):
    assert hardware.cpu_has_bf16_units() is None  # the file does not exist (not Linux)


def test_only_bf16_on_a_cpu_without_units_warns(cpuinfo):
    cpuinfo.write_text(X86_PLAIN)
    with pytest.warns(UserWarning, match=r"without bf16 units .* 13x slower than in float32 .*drop --bf16"):
        hardware.warn_if_slow_bf16(True, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hardware.warn_if_slow_bf16(False, "cpu")  # float32
        hardware.warn_if_slow_bf16(True, "cuda:0")  # a GPU run
        cpuinfo.write_text(X86_PLAIN.replace("avx2\n", "avx2 avx512_bf16\n"))
        hardware.warn_if_slow_bf16(True, "cpu")  # bf16 units on one core's flags
        cpuinfo.unlink()
        hardware.warn_if_slow_bf16(True, "cpu")  # unknown: no word


def test_value_pretraining_in_bf16_on_such_a_cpu_warns(tmp_path, cpuinfo):
    cpuinfo.write_text(X86_PLAIN)
    args = LenVMConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=True, report_to="none")
    with pytest.warns(UserWarning, match="bf16 is on for a run on a CPU without bf16 units"):
        LenVMTrainer(LenVM(tiny_backbone("llama"), gamma=0.9), args)
