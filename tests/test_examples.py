"""The fast examples run as-is (subprocess, tiny models, no downloads) and print their key result line.

examples/train_tiny.py is exercised by tests/test_trainer.py (two-process run) and is skipped here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CASES = {  # script -> (extra arguments, lines that must appear in stdout)
    "quickstart.py": ([], ["identical to plain generate(): True"]),
    "finetune_lora.py": (["--max_steps", "20", "--output_dir", "{tmp}/lora"],
                         ["tau: base head", "identical to plain generate(): True"]),
    "benchmark_tiny.py": (["--output", "{tmp}/bench/results.json", "--max_new_tokens", "16"],
                          ["| method | tau | speed-up | bound |", "identical to baseline: True",
                           "evaluate metric fspad_speculative: tau"]),
    "push_to_hub_dry_run.py": (["--output_dir", "{tmp}/push"],
                               ["nothing uploaded", "generate.py", "README.md",
                                "custom_generate from the repo folder identical to plain generate(): True"]),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, tmp_path):
    args, expected = CASES[script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(EXAMPLES / script), *[a.format(tmp=tmp_path) for a in args]]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    for line in expected:
        assert line in proc.stdout, f"{script}: {line!r} not in output:\n{proc.stdout[-3000:]}"
