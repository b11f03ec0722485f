"""A run directory you can trust (issue 9 §1, §5): resume keys by content, the lock, a
self-contained run directory, enable_caching, output locations checked first, a full disk.

Fast unit tests first; the end-to-end ones run the real pipeline on tiny settings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhfkit import io, pipeline, runstate
from rlhfkit.errors import RlhfkitError

RLHFKIT = [sys.executable, "-m", "rlhfkit"]
IS_ROOT = os.geteuid() == 0


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", **extra)
    env.pop("RANK", None)
    return env


def rlhfkit(*args: str, cwd: str | Path | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([*RLHFKIT, *args], capture_output=True, text=True, env=_env(),
                          cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rlhfkit {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def cli_error(*args: str) -> str:
    """The in-process CLI (fast): the RlhfkitError it stops with, which `main()` prints as
    it is; one line."""
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    res = CliRunner().invoke(app, list(args))
    assert isinstance(res.exception, RlhfkitError), (res.output, res.exception)
    text = str(res.exception)
    assert "\n" not in text, text
    return text


# -- content identity --------------------------------------------------------------------------

def test_model_fingerprint_is_content_not_path(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFKIT_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(tiny_llama_dir, copy)
    first = runstate.model_fingerprint(str(tiny_llama_dir))
    assert runstate.model_fingerprint(str(copy)) == first  # moved or copied: same model
    assert (tmp_path / "cache" / "file_hashes.json").is_file()  # weights hashed once
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert runstate.model_fingerprint(str(copy)) != first
    assert runstate.model_fingerprint("llama-2-7b") == "hub:meta-llama/Llama-2-7b-hf"


def test_data_fingerprint_ignores_the_location(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "sub" / "b.jsonl"
    b.parent.mkdir()
    a.write_text('{"input_text": "x"}\n')
    b.write_text('{"input_text": "x"}\n')
    assert runstate.data_fingerprint(str(a)) == runstate.data_fingerprint(str(b))
    b.write_text('{"input_text": "y"}\n')
    assert runstate.data_fingerprint(str(a)) != runstate.data_fingerprint(str(b))


def test_infer_resume_key_follows_the_adapter_weights(tiny_llama_dir, tmp_path):
    # RUN/policy retrained in place: same path, other weights -> another key (on main the
    # key held the path, so a partial file of the old policy was "resumed").
    from safetensors.torch import load_file, save_file
    from test_infer import _save_lora

    from rlhfkit import infer

    adapter = tmp_path / "policy"
    _save_lora(tiny_llama_dir, adapter)
    cfg = infer.Config(model=str(adapter), eval_dataset=str(tmp_path / "e.jsonl"),
                       output=str(tmp_path / "o.jsonl"))
    (tmp_path / "e.jsonl").write_text('{"input_text": "hi"}\n')
    before = runstate.config_hash(cfg.prediction_key())
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({k: v * 2 for k, v in weights.items()}, str(adapter / "adapter_model.safetensors"))
    assert runstate.config_hash(cfg.prediction_key()) != before


# -- the stage machinery ---------------------------------------------------------------------

def test_stage_checkpoint_resume_prune_publish(tmp_path):
    import torch

    stage = runstate.Stage(tmp_path / "reward_model", "key-a")
    for step in (1, 2, 3):
        stage.save_checkpoint(step, lambda d: (d / "w").write_text("w"), {"pos": step})
    assert [s for s, _ in runstate.checkpoints(stage.dir)] == [2, 3]  # newest `keep`
    expected = torch.rand(3)  # the draw after checkpoint 3 was written
    torch.rand(5)
    found = stage.resume()
    assert found.step == 3 and found.state["pos"] == 3
    assert torch.equal(torch.rand(3), expected)  # RNG state restored
    other = runstate.Stage(stage.dir, "key-b")
    assert other.resume() is None and runstate.checkpoints(stage.dir) == []  # stale: gone
    assert not other.is_done()
    other.publish(lambda d: (d / "out.txt").write_text("out"))
    assert other.is_done() and (stage.dir / "out.txt").read_text() == "out"
    assert sorted(p.name for p in stage.dir.iterdir()) == ["DONE", "out.txt"]


# -- the lock ---------------------------------------------------------------------------------

HOLD = """
import sys, time
from rlhfkit.runstate import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_second_process_stops_at_once_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"preference_dataset": "x.jsonl", "prompt_dataset": "y.jsonl",
                                  "large_model_reference": "llama-2-7b"}))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        for cmd in (["run", str(params), "--output-dir", str(run)],
                    ["train-reward", str(params), "--output-dir", str(run)]):
            t0 = time.monotonic()
            line = one_line_error(rlhfkit(*cmd, check=False))
            assert time.monotonic() - t0 < 60  # at once, not after waiting
            assert f"PID {holder.pid} on " in line and "started" in line, line
        assert not (run / "params.json").exists()  # nothing done
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    with runstate.run_lock(run):
        assert f"PID {os.getpid()} " in (run / ".lock").read_text()


def test_infer_into_a_run_directory_takes_its_lock(tmp_path):
    # Before: `rlhfkit infer -o RUN/eval_results_tuned.jsonl` wrote while `rlhfkit run`
    # worked in RUN. A plain folder (no params.json) gets no lock file.
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.json").write_text("{}")
    (tmp_path / "eval.jsonl").write_text('{"input_text": "a"}\n')
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_line_error(rlhfkit("infer", str(tmp_path / "eval.jsonl"), "--model",
                                      str(tmp_path / "no-model"), "-o",
                                      str(run / "eval_results_tuned.jsonl"), check=False))
        assert f"PID {holder.pid} on " in line, line
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with runstate.lock_if_run_dir(tmp_path):
        assert not (tmp_path / ".lock").exists()


def test_lock_is_reentrant_within_a_process(tmp_path):
    with runstate.run_lock(tmp_path), runstate.run_lock(tmp_path):
        pass
    with runstate.run_lock(tmp_path):  # released after the outer block
        pass


# -- output locations, checked before any work -------------------------------------------------

@pytest.mark.parametrize("where", ["proc", "file", "under_file"])
def test_bad_run_directory_is_one_line_and_nothing_written(tmp_path, where):
    afile = tmp_path / "afile"
    afile.write_text("x")
    run = {"proc": Path("/proc/rlhfkit-run"), "file": afile,
           "under_file": afile / "run"}[where]
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"preference_dataset": "x.jsonl", "prompt_dataset": "y.jsonl",
                                  "large_model_reference": "llama-2-7b"}))
    for cmd in ("run", "train-reward", "train-policy"):
        assert str(run) in cli_error(cmd, str(params), "--output-dir", str(run))
    if where == "proc":  # and through the real command line: one line, exit 1
        line = one_line_error(rlhfkit("run", str(params), "--output-dir", str(run),
                                      check=False))
        assert str(run) in line
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == [
        "afile", "p.json"]


@pytest.mark.skipif(IS_ROOT, reason="root writes anywhere")
def test_unwritable_directory_is_refused(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    with pytest.raises(RlhfkitError, match="cannot write here"):
        io.check_output_dir(locked / "run")


def test_infer_output_that_is_a_directory_fails_before_loading(tmp_path):
    (tmp_path / "e.jsonl").write_text('{"input_text": "hi"}\n')
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    line = cli_error("infer", str(tmp_path / "e.jsonl"), "-o", str(out_dir),
                     "--model", str(tmp_path / "no-model"))  # fails before any model load
    assert "is a directory" in line
    assert list(out_dir.iterdir()) == []


def test_output_checks_by_kind(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RlhfkitError, match="is a file, not a directory"):
        io.check_output_file(tmp_path / "f" / "out.jsonl")
    with pytest.raises(RlhfkitError, match="not a directory"):
        io.check_output_dir(tmp_path / "f")
    assert io.check_output_file(tmp_path / "new" / "deeper" / "o.jsonl")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_write_error_names_the_final_file_not_the_temporary_one():
    err = io.write_error(OSError(28, "No space left on device",
                                 "/r/.reward_model.ab_cd123.tmp/rlhfkit.json"))
    assert str(err) == "/r/reward_model/rlhfkit.json: cannot write: No space left on device"


# -- pickled adapters ------------------------------------------------------------------------

def test_adapter_holding_only_a_pickle_is_refused(tiny_llama_dir, tmp_path):
    import torch
    from test_infer import _save_lora

    adapter = tmp_path / "adapter"
    peft_model = _save_lora(tiny_llama_dir, adapter)
    (adapter / "adapter_model.safetensors").unlink()
    torch.save({k: v for k, v in peft_model.state_dict().items() if "lora" in k},
               adapter / "adapter_model.bin")
    (tmp_path / "e.jsonl").write_text('{"input_text": "hi"}\n')
    for args in (["--model", str(adapter)],
                 ["--model", str(tiny_llama_dir), "--adapter", str(adapter)]):
        out = tmp_path / "o.jsonl"
        line = cli_error("infer", str(tmp_path / "e.jsonl"), "-o", str(out), *args)
        assert "adapter_model.bin" in line and "safetensors" in line
        assert not out.exists()


# -- PipelineJob's keyword arguments -----------------------------------------------------------

VALUES = {"preference_dataset": "p.jsonl", "prompt_dataset": "q.jsonl",
          "large_model_reference": "llama-2-7b"}


def test_pipeline_job_vertex_arguments_get_a_notice_others_an_error(tmp_path, capsys):
    job = pipeline.PipelineJob(display_name="d", parameter_values=VALUES, labels={"a": "b"},
                               job_id="j", credentials=None, failure_policy="fast",
                               run_dir=tmp_path / "r")
    assert job.enable_caching
    err = capsys.readouterr().err
    assert "labels is a Vertex AI setting with no local meaning" in err
    with pytest.raises(RlhfkitError, match="unknown argument 'enable_cachng'; did you mean "
                                           "'enable_caching'"):
        pipeline.PipelineJob(display_name="d", parameter_values=VALUES, enable_cachng=False)
    with pytest.raises(RlhfkitError, match="unknown argument 'pipline_root'"):
        pipeline.PipelineJob(display_name="d", parameter_values=VALUES, pipline_root="x")
    assert not pipeline.PipelineJob(display_name="d", parameter_values=VALUES,
                                    enable_caching=False).enable_caching


# -- end to end: the real pipeline on tiny settings --------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dirs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("integrity")
    rlhfkit("demo", "data", str(root / "data"), "--preference-size", "24",
            "--prompt-size", "16", "--eval-size", "6")
    return {"root": root, "model": tiny_model_dirs["llama"]}


def tiny_values(model: Path | str, data: str = "data", **overrides) -> dict:
    from rlhfkit.demo.world import DEMO_INSTRUCTION

    return {"preference_dataset": f"{data}/preference.jsonl",
            "prompt_dataset": f"{data}/prompt.jsonl", "eval_dataset": f"{data}/eval.jsonl",
            "large_model_reference": str(model), "instruction": DEMO_INSTRUCTION,
            "prompt_sequence_length": 96, "target_sequence_length": 8,
            "reward_model_train_steps": 2, "reinforcement_learning_train_steps": 2,
            "batch_size": 4, "ppo_epochs": 1, "checkpoint_every_steps": 1, **overrides}


def done_hashes(run: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in run.glob("*/DONE")}


@pytest.mark.slow
def test_moved_run_and_copied_model_do_not_retrain_and_compare_works_anywhere(world):
    root = world["root"]
    (root / "p.json").write_text(json.dumps(tiny_values(world["model"])))  # relative paths
    run = root / "runs" / "a"
    rlhfkit("run", "p.json", "--output-dir", "runs/a", cwd=root)
    assert (run / "summary.txt").read_text().startswith("== summary ==\nrun directory: ")
    written = json.loads((run / "params.json").read_text())
    assert written["parameter_values"]["eval_dataset"] == str(root / "data" / "eval.jsonl")
    assert written["fingerprints"]["eval_dataset"] == runstate.data_fingerprint(
        str(root / "data" / "eval.jsonl"))
    # From another working directory the run still finds its eval data (gold columns).
    summary = json.loads(rlhfkit("compare", str(run), "--json", "--out-dir",
                                 str(root / "cmp"), cwd="/").stdout)
    assert summary.get("gold_win_rate") is not None, summary

    # The run directory moved, the base model copied elsewhere: nothing retrains.
    before = done_hashes(run)
    moved = root / "elsewhere" / "b"
    shutil.move(str(run), moved)
    model_copy = root / "models" / "tiny"
    shutil.copytree(world["model"], model_copy)
    (root / "p2.json").write_text(json.dumps(tiny_values(model_copy, data=str(root / "data"))))
    again = rlhfkit("run", str(root / "p2.json"), "--output-dir", str(moved))
    assert done_hashes(moved) == before
    for stage in ("train_reward", "train_policy", "infer_base", "infer_tuned"):
        assert f"{stage} skipped" in again.stderr, again.stderr


@pytest.mark.slow
def test_stale_partial_predictions_of_an_old_policy_are_not_resumed(world, monkeypatch):
    # Killed while infer_tuned had written its partial file; then an RL parameter changed.
    from rlhfkit import infer
    from rlhfkit.params import PipelineParams

    monkeypatch.chdir(world["root"])
    run = world["root"] / "stale"
    real_call = infer._PartialWriter.__call__

    def dies_in_tuned(self, prompts, batch, texts):
        real_call(self, prompts, batch, texts)
        if "tuned" in self.path.name and "untuned" not in self.path.name:
            raise KeyboardInterrupt  # as if killed right after the write

    monkeypatch.setattr(infer._PartialWriter, "__call__", dies_in_tuned)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(PipelineParams.from_dict(tiny_values(world["model"])), run)
    monkeypatch.setattr(infer._PartialWriter, "__call__", real_call)
    partial = run / f".{pipeline.TUNED}.partial"
    lines = partial.read_text().splitlines()
    assert len(lines) > 1 and not (run / "infer_tuned" / "DONE").exists()
    # Mark the old policy's predictions, so a resume from them cannot go unnoticed.
    stale = [lines[0]] + [json.dumps({**json.loads(x), "prediction": "STALE"})
                          for x in lines[1:]]
    partial.write_text("\n".join(stale) + "\n")

    params = PipelineParams.from_dict(tiny_values(world["model"],
                                                  reinforcement_learning_train_steps=3))
    out = pipeline.run_pipeline(params, run)
    assert out.stages["train_policy"] == "ran"
    tuned = [json.loads(x)["prediction"] for x in (run / pipeline.TUNED).read_text().splitlines()]
    assert "STALE" not in tuned
    fresh = infer.run(infer.Config(model=str(run / "policy"), eval_dataset=params.eval_dataset,
                                   output=str(world["root"] / "fresh.jsonl"), params=params))
    assert tuned == [json.loads(x)["prediction"] for x in fresh.read_text().splitlines()]

    # enable_caching=False (Vertex's PipelineJob argument): every stage reruns from scratch.
    before = {p.parent.name: p.stat().st_mtime_ns for p in run.glob("*/DONE")}
    job = pipeline.PipelineJob(display_name="t", parameter_values=tiny_values(
        world["model"], reinforcement_learning_train_steps=3), run_dir=run,
        enable_caching=False)
    outcome = job.run()
    assert [outcome.stages[s] for s in ("train_reward", "train_policy", "infer_base",
                                        "infer_tuned")] == ["ran"] * 4
    after = {p.parent.name: p.stat().st_mtime_ns for p in run.glob("*/DONE")}
    assert all(after[k] != before[k] for k in before)


ENOSPC_CHILD = """
import errno, os, sys
real = os.fdopen
def fdopen(fd, *args, **kwargs):  # the disk fills up when the reward model's metadata is written
    if ".rlhfkit.json." in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(fd, *args, **kwargs)
os.fdopen = fdopen
sys.argv = ["rlhfkit", *sys.argv[1:]]
from rlhfkit.cli import main
main()
"""


@pytest.mark.slow
def test_full_disk_is_one_line_naming_the_file_and_nothing_is_done(world):
    root = world["root"]
    (root / "enospc.json").write_text(json.dumps(tiny_values(world["model"],
                                                             data=str(root / "data"))))
    run = root / "enospc"
    proc = subprocess.run([sys.executable, "-c", ENOSPC_CHILD, "train-reward",
                           str(root / "enospc.json"), "--output-dir", str(run),
                           "--no-progress"], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"{run}/reward_model/rlhfkit.json: cannot write: "
                    "No space left on device"), proc.stderr
    assert not list(run.rglob("DONE"))
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # nothing half-written


def test_resume_with_every_prediction_already_made(tiny_llama_dir):
    # Killed after the last batch, before the output was written: nothing left to generate
    # (the tokenizer used to be called on an empty list and crash).
    from rlhfkit import infer, models

    tok, model = models.load_tokenizer(str(tiny_llama_dir)), models.load_causal_lm(
        str(tiny_llama_dir))
    cfg = infer.Config(model=str(tiny_llama_dir), eval_dataset="-", output="-")
    assert infer.generate(model, tok, ["a", "b"], cfg, done={0: "x", 1: "y"}) == ["x", "y"]


def test_demo_excerpt_replaces_the_marked_block_of_the_readme(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "demo_excerpt", Path(__file__).parents[1] / "benchmarks" / "demo_excerpt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.txt").write_text("== summary ==\ngold win rate 0.6\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{mod.START}\nhand-edited 0.9\n{mod.END}\nafter\n")
    mod.write_readme(readme, mod.excerpt(run, None))
    text = readme.read_text()
    assert "hand-edited" not in text and "gold win rate 0.6" in text
    assert text.startswith("before\n") and text.endswith(f"{mod.END}\nafter\n")
