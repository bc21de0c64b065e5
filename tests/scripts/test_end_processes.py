"""end_processes: with a process group it ends the process after Python's own shutdown steps (threads joined,
exit handlers run); alone it returns."""

import os
import subprocess
from pathlib import Path

from conftest import accelerate_launch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "scripts" / "end_processes_script.py"


def launch(out: Path, *launcher: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = accelerate_launch(*launcher, str(SCRIPT), str(out))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def test_two_processes_join_their_threads_run_their_exit_handlers_and_end_with_status_0(tmp_path):
    result = launch(tmp_path, "--multi_gpu", "--num_processes", "2")
    assert result.returncode == 0, (result.stdout[-1500:], result.stderr[-3000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exit0", "exit1", "thread0", "thread1"]  # neither returned


def test_one_process_without_a_process_group_returns(tmp_path):
    result = launch(tmp_path, "--cpu", "--num_processes", "1")
    assert result.returncode == 0, (result.stdout[-1500:], result.stderr[-3000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after0", "exit0", "thread0"]
