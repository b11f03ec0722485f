import json

import pytest
import torch
from typer.testing import CliRunner

from rlhfkit import infer, models
from rlhfkit.cli import app
from rlhfkit.errors import RlhfkitError
from rlhfkit.params import PipelineParams as P

INSTRUCTION = "Summarize in less than 50 words."
POSTS = [
    "My roommate keeps eating my food and I do not know how to bring it up. [summary]: ",
    "hi [summary]: ",
    "I got a job offer from a startup but my current team is great. What should I do? "
    "We have been dating for two years and she wants to move. [summary]: ",
    "TL;DR: my dog chewed the couch. [summary]: ",
    "We have been dating for two years. [summary]: ",
]


def write_eval(path, posts=POSTS, target_at=None):
    with open(path, "w") as f:
        for i, p in enumerate(posts):
            rec = {"input_text": p}
            if i == target_at:
                rec["output_text"] = "a reference summary"
            f.write(json.dumps(rec) + "\n")
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_cli_writes_vertex_lines_in_input_order(arch, tiny_model_dirs, tmp_path):
    eval_path = write_eval(tmp_path / "eval.jsonl", target_at=2)
    out = tmp_path / "run" / "eval_results_tuned.jsonl"
    res = CliRunner().invoke(app, [
        "infer", eval_path, "-o", str(out), "--model", str(tiny_model_dirs[arch]),
        "--instruction", INSTRUCTION, "--batch-size", "2", "--target-sequence-length", "8"])
    assert res.exit_code == 0, res.output
    lines = read_jsonl(out)
    assert len(lines) == len(POSTS)
    for i, (line, post) in enumerate(zip(lines, POSTS, strict=True)):
        assert set(line) == {"inputs", "prediction"}
        assert set(line["inputs"]) == {"inputs_pretokenized", "targets_pretokenized"}
        assert line["inputs"]["inputs_pretokenized"] == INSTRUCTION + "\n\n\n" + post
        assert line["inputs"]["targets_pretokenized"] == ("a reference summary" if i == 2 else "")
        assert isinstance(line["prediction"], str)
    assert not list(out.parent.glob(".*"))  # no partial / temporary file left behind


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2", "t5"])
def test_batched_greedy_equals_one_by_one(arch, tiny_model_dirs):
    # Left padding must not change what a prompt generates: the batch mixes lengths
    # from 2 to ~40 tokens, so most rows are padded.
    d = str(tiny_model_dirs[arch])
    tok, model = models.load_tokenizer(d), models.load_causal_lm(d).eval()
    prompts = [INSTRUCTION + "\n\n\n" + p for p in POSTS] + ["hi"]
    cfg = infer.Config(model=d, eval_dataset="-", output="-",
                       params=P(target_sequence_length=12), batch_size=len(prompts))
    batched = infer.generate(model, tok, prompts, cfg)
    cfg.batch_size = 1
    single = infer.generate(model, tok, prompts, cfg)
    assert batched == single
    assert len(set(batched)) > 1  # not a degenerate model answering everything alike


def test_prompts_are_truncated_from_the_left(tiny_model_dirs):
    d = str(tiny_model_dirs["gpt2"])  # no BOS: the kept window is exactly the last k tokens
    tok, model = models.load_tokenizer(d), models.load_causal_lm(d).eval()
    tail = " my dog chewed the couch. [summary]: "
    a, b = "I got a job offer from a startup." + tail, "We have been dating." + tail
    k = len(tok(tail)["input_ids"])
    assert tok(a)["input_ids"][-k:] == tok(tail)["input_ids"]  # precondition of the test
    cfg = infer.Config(model=d, eval_dataset="-", output="-",
                       params=P(target_sequence_length=10, prompt_sequence_length=k))
    out = infer.generate(model, tok, [a, b, tail], cfg)
    assert out[0] == out[1] == out[2]
    cfg.params.prompt_sequence_length = 512  # with the whole prompts, the predictions differ
    full = infer.generate(model, tok, [a, b], cfg)
    assert full[0] != full[1]


def test_decode_stops_at_the_first_eos(tiny_model_dirs):
    tok = models.load_tokenizer(str(tiny_model_dirs["qwen2"]))  # pad != eos
    word = tok("dog", add_special_tokens=False)["input_ids"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ids = torch.tensor([word + [eos] + word + [pad], word + word + [pad, pad]])
    texts = infer.decode_new_tokens(tok, ids, [eos])
    assert texts == ["dog", "dogdog"]


def test_length_sorted_batches_cover_every_index_once():
    batches = infer.length_sorted_batches([3, 9, 1, 9, 5], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]  # longest first, ties by input order


def _save_lora(base_dir, out_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = models.load_causal_lm(str(base_dir))
    # init_lora_weights=False: B is random too, so the adapter changes the outputs.
    lora = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    peft_model.save_pretrained(out_dir)
    return peft_model


def test_adapter_merged_model_and_adapter_alone_agree(tiny_llama_dir, tmp_path):
    adapter = tmp_path / "policy"
    peft_model = _save_lora(tiny_llama_dir, adapter)
    merged = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    models.load_tokenizer(str(tiny_llama_dir)).save_pretrained(merged)
    eval_path = write_eval(tmp_path / "eval.jsonl")

    def predictions(name, **kw):
        cfg = infer.Config(eval_dataset=eval_path, output=str(tmp_path / f"{name}.jsonl"),
                           params=P(target_sequence_length=8), **kw)
        return [r["prediction"] for r in read_jsonl(infer.run(cfg))]

    with_adapter = predictions("a", model=str(tiny_llama_dir), adapter=str(adapter))
    assert predictions("m", model=str(merged)) == with_adapter
    assert predictions("alone", model=str(adapter)) == with_adapter  # base from adapter_config
    assert predictions("base", model=str(tiny_llama_dir)) != with_adapter


def test_sampling_is_seeded(tiny_model_dirs, tmp_path):
    d = str(tiny_model_dirs["gpt2"])
    eval_path = write_eval(tmp_path / "eval.jsonl")

    def predictions(temperature, seed):
        cfg = infer.Config(model=d, eval_dataset=eval_path, output=str(tmp_path / "o.jsonl"),
                           params=P(target_sequence_length=8, inference_temperature=temperature,
                                    seed=seed))
        return [r["prediction"] for r in read_jsonl(infer.run(cfg))]

    first = predictions(1.0, 0)
    assert predictions(1.0, 0) == first
    assert predictions(1.0, 1) != first
    assert predictions(0.0, 0) != first


def test_resumes_from_a_partial_file_with_the_same_settings(tiny_llama_dir, tmp_path):
    eval_path = write_eval(tmp_path / "eval.jsonl")
    out = tmp_path / "eval_results_untuned.jsonl"
    cfg = infer.Config(model=str(tiny_llama_dir), eval_dataset=eval_path, output=str(out),
                       params=P(instruction=INSTRUCTION, target_sequence_length=4))
    from rlhfkit.runstate import config_hash

    partial = out.with_name(f".{out.name}.partial")
    prompt0 = INSTRUCTION + "\n\n\n" + POSTS[0]
    lines = [{"key": config_hash(cfg.prediction_key())},
             {"index": 0, "prompt": prompt0, "prediction": "FROM AN EARLIER RUN"},
             {"index": 1, "prompt": "not this prompt", "prediction": "STALE"}]
    partial.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"index": 2, "pr')
    preds = [r["prediction"] for r in read_jsonl(infer.run(cfg))]
    assert preds[0] == "FROM AN EARLIER RUN" and "STALE" not in preds
    assert not partial.exists()
    # Another setting (here the instruction) ignores the partial file.
    partial.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg.params.instruction = None
    preds = [r["prediction"] for r in read_jsonl(infer.run(cfg))]
    assert "FROM AN EARLIER RUN" not in preds


def test_bad_eval_file_is_a_user_error_and_writes_nothing(tiny_llama_dir, tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"input_text": "fine"}\n{"input_text": 3}\n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(RlhfkitError, match=r"eval.jsonl:2: input_text"):
        infer.run(infer.Config(model=str(tiny_llama_dir), eval_dataset=str(bad),
                               output=str(out)))
    assert not out.exists()
    with pytest.raises(RlhfkitError, match="batch_size"):
        infer.run(infer.Config(model=str(tiny_llama_dir), eval_dataset=str(bad),
                               output=str(out), batch_size=0))


def test_t5_prediction_is_the_decoders_greedy_continuation(tiny_t5_dir):
    # Encoder-decoder: the prompt is the encoder's input and the prediction is what the
    # decoder writes after its start token (pad id 0), one argmax at a time.
    d = str(tiny_t5_dir)
    tok, model = models.load_tokenizer(d), models.load_causal_lm(d).eval()
    prompt = INSTRUCTION + "\n\n\n" + POSTS[0]
    cfg = infer.Config(model=d, eval_dataset="-", output="-", params=P(target_sequence_length=6))
    [prediction] = infer.generate(model, tok, [prompt], cfg)
    enc = tok([prompt], return_tensors="pt")
    dec = torch.tensor([[model.config.decoder_start_token_id]])
    with torch.no_grad():
        for _ in range(6):
            nxt = model(**enc, decoder_input_ids=dec).logits[:, -1].argmax(-1, keepdim=True)
            if nxt.item() == tok.eos_token_id:
                break
            dec = torch.cat([dec, nxt], 1)
    assert prediction == tok.decode(dec[0, 1:], skip_special_tokens=True).strip()
