"""The real `rlhfkit train-reward` CLI in subprocesses: killed with SIGKILL and restarted it
ends with the weights of an uninterrupted run; under `torchrun --nproc_per_node 2` it
follows the loss trajectory of a one-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest_reward import final_weights, read_scalars, write_params

from rlhfkit import reward
from rlhfkit.params import PipelineParams

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _in_process(params_file: Path, run_dir: Path) -> dict:
    cfg = reward.RewardConfig.from_params(PipelineParams.from_file(params_file, quiet=True),
                                          run_dir)
    cfg.progress = False
    return reward.run(cfg)


def _cli(params_file: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "rlhfkit", "train-reward", str(params_file),
            "--output-dir", str(run_dir), "--no-progress"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, tiny_llama_dir):
    # Enough steps after the first checkpoint (step 4) that the kill lands mid-run.
    params = write_params(tmp_path, tiny_llama_dir, reward_model_train_steps=48,
                          checkpoint_every_steps=4)
    reference = _in_process(params, tmp_path / "uninterrupted")

    run_dir = tmp_path / "killed"
    stage = run_dir / "reward_model"
    proc = subprocess.Popen(_cli(params, run_dir), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180  # generous: the machine may be busy
    while not list(stage.glob("checkpoint-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + \
        proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (stage / "DONE").exists()

    # Restarted (in this process to save a second interpreter start-up: the same run()).
    resumed = _in_process(params, run_dir)
    assert resumed["resumed_from_step"] >= 4 and not resumed["skipped"]
    want, got = final_weights(Path(reference["reward_model_dir"])), final_weights(stage)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-6), name
    assert not list(stage.glob("checkpoint-*"))


@pytest.mark.slow
def test_two_processes_follow_the_one_process_run(tmp_path, tiny_llama_dir):
    params = write_params(tmp_path, tiny_llama_dir, reward_model_train_steps=6,
                          micro_batch_size=2, checkpoint_every_steps=3)
    one = _in_process(params, tmp_path / "one")
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                          *_cli(params, tmp_path / "two")[1:]],
                         env=ENV, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stderr
    a = read_scalars(Path(one["logs_dir"]))
    b = read_scalars(tmp_path / "two" / "reward-logs")
    for tag in ("rank_loss", "accuracy", "grad_norm", "eval/rank_loss"):
        steps_a, values_a = zip(*a[tag], strict=True)
        steps_b, values_b = zip(*b[tag], strict=True)
        assert steps_a == steps_b, tag
        assert values_a == pytest.approx(values_b, abs=1e-4), tag
    # The loss really moved, so matching trajectories mean matching updates.
    assert a["rank_loss"][-1][1] < a["rank_loss"][0][1] - 0.05
    want = final_weights(Path(one["reward_model_dir"]))
    got = final_weights(tmp_path / "two" / "reward_model")
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-5), name
