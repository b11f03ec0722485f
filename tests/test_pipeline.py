"""End to end: the real `rlhfkit run` CLI on tiny settings, rerun, a parameter change,
and a run killed with SIGKILL in the middle of PPO and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_run import RLHFKIT, cli_env, demo_world, rlhfkit

from rlhfkit.params import PipelineParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dirs) -> dict[str, Path]:
    return demo_world(tmp_path_factory.mktemp("pipeline"), tiny_model_dirs["llama"])


def write_params(world, name: str, **overrides) -> Path:
    from rlhfkit.demo.world import DEMO_INSTRUCTION

    values = {
        "preference_dataset": str(world["data"] / "preference.jsonl"),
        "prompt_dataset": str(world["data"] / "prompt.jsonl"),
        "eval_dataset": str(world["data"] / "eval.jsonl"),
        "large_model_reference": str(world["model"]),
        "instruction": DEMO_INSTRUCTION,
        "prompt_sequence_length": 96, "target_sequence_length": 8,
        "reward_model_train_steps": 2, "reinforcement_learning_train_steps": 2,
        "batch_size": 4, "ppo_epochs": 1, "checkpoint_every_steps": 1,
        **overrides,
    }
    path = world["root"] / f"{name}.json"
    path.write_text(json.dumps(values))
    return path


def stage_markers(run: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in run.glob("*/DONE")}


def test_run_end_to_end_then_rerun_skips_everything(world):
    params = write_params(world, "e2e")
    run = world["root"] / "run"
    proc = rlhfkit("run", str(params), "--output-dir", str(run))
    assert "Traceback" not in proc.stderr
    # Every artifact of DESIGN.md's run directory.
    written = json.loads((run / "params.json").read_text())
    resolved = written["parameter_values"]
    assert resolved["batch_size"] == 4 and resolved["kl_coeff"] == 0.1  # defaults written
    assert PipelineParams.from_dict(resolved, quiet=True)
    assert PipelineParams.from_file(run / "params.json", quiet=True)  # a params file itself
    assert set(written["fingerprints"]) >= {"preference_dataset", "large_model_reference"}
    for stage in ("reward_model", "policy", "infer_base", "infer_tuned"):
        assert (run / stage / "DONE").is_file(), stage
    assert list((run / "reward-logs").glob("events.*"))
    assert list((run / "reinforcer-logs").glob("events.*"))
    n_eval = len((world["data"] / "eval.jsonl").read_text().splitlines())
    for name in ("eval_results_untuned.jsonl", "eval_results_tuned.jsonl"):
        lines = [json.loads(x) for x in (run / name).read_text().splitlines()]
        assert len(lines) == n_eval
        assert set(lines[0]) == {"inputs", "prediction"}
        assert set(lines[0]["inputs"]) == {"inputs_pretokenized", "targets_pretokenized"}
        assert lines[0]["inputs"]["inputs_pretokenized"].startswith(resolved["instruction"])
    assert (run / "comparison.csv").is_file() and (run / "report.html").is_file()
    # deploy_model (Vertex's default true): a merged plain model, and how to serve it.
    assert (run / "model" / "config.json").is_file()
    assert f"rlhfkit serve {run}" in proc.stderr
    assert "== summary ==" in proc.stderr and "report:" in proc.stderr
    assert "mean gold score: base " in proc.stderr  # the tiny world is a demo world
    assert "noise ceiling of the labels" in proc.stderr and "agrees with" in proc.stderr
    assert "expected accuracy over the label noise" in proc.stderr
    meta = json.loads((run / "reward_model" / "rlhfkit.json").read_text())
    assert 0 < meta["eval_expected_accuracy"] < 1

    before = stage_markers(run)
    again = rlhfkit("run", str(params), "--output-dir", str(run))
    assert stage_markers(run) == before  # nothing retrained, no marker rewritten
    assert again.stderr.count("skipped") >= 4


def test_changing_a_parameter_reruns_only_dependent_stages(world):
    run = world["root"] / "run_change"
    rlhfkit("run", str(write_params(world, "a")), "--output-dir", str(run))
    before = stage_markers(run)
    rlhfkit("run", str(write_params(world, "b", reinforcement_learning_train_steps=3)),
            "--output-dir", str(run))
    after = stage_markers(run)
    assert after["reward_model"] == before["reward_model"]  # reward stage untouched
    assert after["infer_base"] == before["infer_base"]  # the base model's outputs too
    assert after["policy"] != before["policy"]
    assert after["infer_tuned"] != before["infer_tuned"]


def test_killed_run_resumes_and_finishes(world):
    params = write_params(world, "kill", reinforcement_learning_train_steps=40)
    run = world["root"] / "run_kill"
    proc = subprocess.Popen([*RLHFKIT, "run", str(params), "--output-dir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    try:
        deadline = time.monotonic() + 180
        while not list((run / "policy").glob("checkpoint-*")):
            assert proc.poll() is None, "the run ended before a policy checkpoint appeared"
            assert time.monotonic() < deadline, "no policy checkpoint within 180 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run / "policy" / "DONE").exists()  # killed: never marked done
    assert (run / "reward_model" / "DONE").exists()
    done = rlhfkit("run", str(params), "--output-dir", str(run))
    assert "resum" in done.stderr.lower()
    assert (run / "policy" / "DONE").exists() and (run / "eval_results_tuned.jsonl").exists()


def test_verdict_only_when_the_interval_excludes_a_tie():
    from rlhfkit.pipeline import verdict

    assert verdict({"win_rate_ci_low": 0.51, "win_rate_ci_high": 0.7}, "") == ": tuned is better"
    assert verdict({"gold_win_rate_ci_low": 0.2, "gold_win_rate_ci_high": 0.49},
                   "gold_") == ": tuned is WORSE"
    assert verdict({"win_rate_ci_low": 0.45, "win_rate_ci_high": 0.6}, "") == (
        ": no clear difference")  # 0.5 inside the interval
    assert verdict({"win_rate_ci_low": 0.5, "win_rate_ci_high": 0.6}, "") == (
        ": no clear difference")  # a boundary at 0.5 is not "excludes"
    assert verdict({}, "gold_") == ""  # no gold scores: say nothing


def test_banner_and_summary_name_the_method():
    from rlhfkit.pipeline import Outcome, method_name, summary_lines

    def name(**kw):
        return method_name(PipelineParams(**kw))

    assert name() == "PPO (value model separate)"  # the defaults: PPO, LoRA rank 1
    assert name(value_model="shared") == "PPO (value model shared)"
    assert name(policy_lora_dim=0) == "PPO (value head on the policy's trunk)"
    assert name(rl_algorithm="rloo") == "RLOO" and name(rl_algorithm="grpo") == "GRPO"
    assert name(tuning_method="dpo", rl_algorithm="grpo") == "DPO"  # dpo wins over rl_algorithm
    out = Outcome(run_dir=Path("RUN"), policy={"steps": 7, "final_kl": 0.5, "final_score": 1.0})
    text = "\n".join(summary_lines(out, PipelineParams(rl_algorithm="rloo")))
    assert "7 steps of RLOO" in text and "PPO" not in text
