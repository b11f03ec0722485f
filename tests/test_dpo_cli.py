"""The real CLI with DPO: `rlhfkit train-dpo` killed with SIGKILL and restarted ends with the
weights of an uninterrupted run; `rlhfkit run` with tuning_method dpo on a tiny demo world,
with and without a reward model, writes what infer and compare read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_run import RLHFKIT, cli_env, demo_world, rlhfkit
from conftest_reward import preference_records, read_scalars, write_jsonl

from rlhfkit import dpo
from rlhfkit.params import PipelineParams

pytestmark = pytest.mark.slow


def _weights(policy_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(policy_dir / "adapter_model.safetensors"))


def test_killed_train_dpo_resumes_to_the_same_weights(tmp_path, tiny_llama_dir):
    data = write_jsonl(tmp_path / "pref.jsonl", preference_records(48))
    values = {"preference_dataset": str(data), "prompt_dataset": str(data),
              "large_model_reference": str(tiny_llama_dir), "instruction": "Summarize",
              "prompt_sequence_length": 24, "target_sequence_length": 12,
              "reinforcement_learning_train_steps": 120, "batch_size": 8,
              "checkpoint_every_steps": 4, "reinforcement_learning_rate_multiplier": 50.0,
              "policy_lora_dim": 2}  # tuning_method need not be set for train-dpo
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(values))
    params = PipelineParams.from_file(params_file, quiet=True)
    want = dpo.run(dpo.DPOConfig(params, str(tmp_path / "uninterrupted")))

    run = tmp_path / "killed"
    proc = subprocess.Popen([*RLHFKIT, "train-dpo", str(params_file), "--output-dir", str(run)],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180  # generous: the machine may be busy
    while not list((run / "policy").glob("checkpoint-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "policy" / "DONE").exists()
    # TensorBoard orders event files by name: seconds since the epoch, then the pid. A
    # restart within the same second could sort before the killed run's file.
    time.sleep(1.1)

    got = dpo.run(dpo.DPOConfig(params, str(run)))  # the same run() the CLI calls
    assert got["resumed_from_step"] >= 4 and not got["skipped"]
    a, b = _weights(Path(want["policy_dir"])), _weights(run / "policy")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    steps = [s for s, _ in read_scalars(run / "dpo-logs")["loss"]]
    assert steps == list(range(1, 121))  # each step once, the killed run's tail purged


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dirs) -> dict[str, Path]:
    return demo_world(tmp_path_factory.mktemp("dpo_pipeline"), tiny_model_dirs["llama"], 8)


def _params(world, name: str, **overrides) -> Path:
    from rlhfkit.demo.world import DEMO_INSTRUCTION

    values = {"preference_dataset": str(world["data"] / "preference.jsonl"),
              "prompt_dataset": str(world["data"] / "prompt.jsonl"),
              "eval_dataset": str(world["data"] / "eval.jsonl"),
              "large_model_reference": str(world["model"]), "instruction": DEMO_INSTRUCTION,
              "prompt_sequence_length": 96, "target_sequence_length": 8,
              "tuning_method": "dpo", "reinforcement_learning_train_steps": 3,
              "batch_size": 4, "checkpoint_every_steps": 2, **overrides}
    path = world["root"] / f"{name}.json"
    path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize("reward_steps", [0, 2])
def test_run_with_tuning_method_dpo(world, reward_steps):
    run = world["root"] / f"run{reward_steps}"
    proc = rlhfkit("run", str(_params(world, f"p{reward_steps}",
                                       reward_model_train_steps=reward_steps)),
                    "--output-dir", str(run))
    assert "Traceback" not in proc.stderr
    assert (run / "policy" / "DONE").is_file() and list((run / "dpo-logs").glob("events.*"))
    assert not (run / "reinforcer-logs").exists()  # no PPO ran
    assert (run / "reward_model").is_dir() == (reward_steps > 0)
    for name in ("eval_results_untuned.jsonl", "eval_results_tuned.jsonl"):
        assert len((run / name).read_text().splitlines()) == 6
    assert (run / "comparison.csv").is_file() and (run / "report.html").is_file()
    assert "3 DPO steps" in proc.stderr and "gold win rate of tuned over base" in proc.stderr
    assert ("win rate of tuned over base (reward model)" in proc.stderr) == (reward_steps > 0)
    again = rlhfkit("run", str(_params(world, f"p{reward_steps}",
                                        reward_model_train_steps=reward_steps)),
                     "--output-dir", str(run))
    assert "train_dpo skipped" in again.stderr


def test_bad_dpo_parameter_is_one_line(world):
    proc = rlhfkit("train-dpo", str(_params(world, "bad", dpo_loss="hinge")),
                    "--output-dir", str(world["root"] / "bad"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "dpo_loss must be one of sigmoid, ipo, got 'hinge'" in proc.stderr
    assert not (world["root"] / "bad").exists()


def test_two_processes_follow_the_one_process_run(tmp_path, tiny_llama_dir):
    data = write_jsonl(tmp_path / "pref.jsonl", preference_records(32))
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({
        "preference_dataset": str(data), "prompt_dataset": str(data),
        "large_model_reference": str(tiny_llama_dir), "instruction": "Summarize",
        "prompt_sequence_length": 24, "target_sequence_length": 12,
        "reinforcement_learning_train_steps": 6, "batch_size": 8, "micro_batch_size": 2,
        "checkpoint_every_steps": 3, "reinforcement_learning_rate_multiplier": 200.0,
        "policy_lora_dim": 2}))
    one = dpo.run(dpo.DPOConfig(PipelineParams.from_file(params_file, quiet=True),
                                str(tmp_path / "one")))
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
                          "rlhfkit", "train-dpo", str(params_file), "--output-dir",
                          str(tmp_path / "two")], env=cli_env(), capture_output=True, text=True,
                         timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stderr
    a, b = read_scalars(Path(one["logs_dir"])), read_scalars(tmp_path / "two" / "dpo-logs")
    for tag in ("loss", "rewards/margins", "grad_norm"):
        assert [v for _, v in a[tag]] == pytest.approx([v for _, v in b[tag]], abs=1e-4), tag
    assert a["loss"][-1][1] < a["loss"][0][1] - 0.05  # it moved: matching means matching updates
    want, got = _weights(Path(one["policy_dir"])), _weights(tmp_path / "two" / "policy")
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-5), name
