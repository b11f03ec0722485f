"""`rlhfkit export` / deploy_model: the merged model loads with plain transformers and
computes what the adapter-applied model computes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest_serve import make_run

from rlhfkit import export
from rlhfkit.errors import RlhfkitError


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_export_merges_the_adapter_into_a_plain_model(tmp_path, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = make_run(tiny_llama_dir, tmp_path / "run")
    result = export.export(run, tmp_path / "out")
    out = tmp_path / "out"
    assert result["how"] == "merged" and result["bytes"] > 0
    assert any(out.glob("*.safetensors")) and not (out / "adapter_config.json").exists()
    meta = json.loads((out / "rlhfkit.json").read_text())
    assert meta["instruction"] == "Summarize briefly." and meta["target_sequence_length"] == 8

    tok = AutoTokenizer.from_pretrained(out)  # the tokenizer travels with the model
    ids = tok(["My roommate keeps eating my food."], return_tensors="pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    base_logits = _logits(base, ids)
    applied = PeftModel.from_pretrained(base, run / "policy").eval()  # unmerged adapter
    want = _logits(applied, ids)
    # The adapter matters (so the comparison can fail), and merging keeps it exactly:
    # W + B A * alpha / r differs from x W + x B A * alpha / r only by float rounding.
    assert (want - base_logits).abs().max() > 1e-2
    torch.testing.assert_close(_logits(merged, ids), want, atol=1e-4, rtol=1e-4)


def test_export_refuses_to_overwrite_and_links_a_full_model(tmp_path, tiny_llama_dir):
    run = make_run(tiny_llama_dir, tmp_path / "run")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(RlhfkitError, match="not empty; pass --overwrite"):
        export.export(run, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    # Exporting an export (a full model) links its files: no model is loaded.
    export.export(run, tmp_path / "a")
    result = export.export(tmp_path / "a", tmp_path / "b")
    assert result["how"] == "linked"
    a, b = tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors"
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary directory left behind


def test_unfinished_run_and_non_model_are_one_line_errors(tmp_path, tiny_llama_dir):
    run = make_run(tiny_llama_dir, tmp_path / "run")
    (run / "policy" / "DONE").unlink()
    with pytest.raises(RlhfkitError, match="policy stage has not finished"):
        export.export(run, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RlhfkitError, match="neither a run directory"):
        export.export(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["a_file", "under_a_file"])
def test_export_output_that_cannot_be_a_directory_fails_before_loading(tmp_path, where):
    # Before: a file as -o was replaced with --overwrite, and a path under a file raised
    # NotADirectoryError from mkdtemp after the source was resolved.
    (tmp_path / "f").write_text("mine")
    out = tmp_path / "f" if where == "a_file" else tmp_path / "f" / "model"
    with pytest.raises(RlhfkitError, match="is a file, not a directory"):
        export.export(tmp_path / "no-such-run", out, overwrite=True)
    assert (tmp_path / "f").read_text() == "mine"


def test_export_cli(tmp_path, tiny_llama_dir):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    run = make_run(tiny_llama_dir, tmp_path / "run")
    res = CliRunner().invoke(app, ["export", str(run), "-o", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "exported (merged)" in res.output and f"rlhfkit serve {tmp_path / 'm'}" in res.output


def test_deploy_stage_writes_run_model_once(tmp_path, tiny_llama_dir):
    from rlhfkit.params import PipelineParams
    from rlhfkit.pipeline import Outcome, deploy

    run = make_run(tiny_llama_dir, tmp_path / "run")
    params = PipelineParams.from_dict({"preference_dataset": "p", "prompt_dataset": "q",
                                       "large_model_reference": str(tiny_llama_dir)})
    assert params.deploy_model  # Vertex's default
    out = Outcome(run_dir=run)
    deploy(params, run, out)
    assert out.stages["deploy"] == "ran" and (run / "model" / "config.json").is_file()
    again = Outcome(run_dir=run)
    deploy(params, run, again)  # same policy: nothing to redo
    assert again.stages["deploy"] == "skipped"
    assert export.resolve_source(run).full_dir == str(run / "model")  # serve uses it
    import shutil

    shutil.rmtree(run / "model")  # deleted by hand: the next run exports again
    deploy(params, run, again)
    assert again.stages["deploy"] == "ran" and (run / "model" / "config.json").is_file()
    # A policy trained again since: RUN/model/ is stale, so serving takes the policy.
    (run / "policy" / "DONE").write_text("retrained\n")
    src = export.resolve_source(run)
    assert src.full_dir is None and src.adapter == str(run / "policy")
    params.deploy_model = False
    off = Outcome(run_dir=run)
    deploy(params, run, off)
    assert off.stages["deploy"] == "off" and off.model_dir is None


def test_a_policy_merged_in_training_is_linked_not_merged_again(tmp_path, tiny_llama_dir):
    """merge_adapter: true already wrote RUN/policy/merged/: export costs no model load."""
    run = make_run(tiny_llama_dir, tmp_path / "run")
    export.export(run / "policy", run / "policy" / "merged")  # stands in for the stage
    meta = json.loads((run / "policy" / "rlhfkit.json").read_text())
    (run / "policy" / "rlhfkit.json").write_text(json.dumps({**meta, "merged": "merged"}))
    result = export.export(run, tmp_path / "out")
    assert result["how"] == "linked"
    src = run / "policy" / "merged" / "model.safetensors"
    assert (tmp_path / "out" / "model.safetensors").stat().st_ino == src.stat().st_ino
