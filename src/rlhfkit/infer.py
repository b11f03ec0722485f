"""Bulk inference: one prediction per eval prompt, in Vertex's bulk-inferrer format.

Vertex's pipeline ends by running the tuned model (and, for comparison, the base model)
over the eval dataset with its "Bulk Inferrer" and writing T5X-style JSON lines:

    {"inputs": {"inputs_pretokenized": PROMPT, "targets_pretokenized": ""}, "prediction": TEXT}

where PROMPT is the instruction + "\\n\\n\\n" + input_text the model saw. This module does
the same on local hardware:

1. load the eval records and render each prompt exactly as training does
   (`data.prompt_text`), truncating from the LEFT to `prompt_sequence_length` tokens so
   the end of a long post and its `[summary]: ` cue survive (`models.encode_prompts`);
2. sort prompts by token length and generate in batches (left-padded, KV-cached
   decoding, `rlhfkit.generate.decode`; for an encoder-decoder such as Flan-T5 the prompt
   is the encoder's input and the decoder writes the prediction, `model.generate`), greedy
   by default as Vertex's bulk inferrer, at most `target_sequence_length` new tokens,
   stopping at EOS;
3. restore input order and write the output atomically.

Finished batches are appended to a hidden partial file next to the output, so an
interrupted run over a large eval set resumes where it stopped (the file is keyed by a hash
of everything that changes predictions, and deleted once the output is written).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit import log
from rlhfkit.errors import RlhfkitError
from rlhfkit.io import atomic_write_jsonl, check_output_file, write_error
from rlhfkit.params import PipelineParams

DEFAULT_BATCH_SIZE = 16  # prompts per generate() call
TARGET_KEY = "output_text"  # an eval record's reference answer, if it has one
# The parameters predictions depend on (PipelineParams declares them; `temperature` of
# bulk inference is `inference_temperature`: 0 = greedy, as Vertex's bulk inferrer).
PREDICTION_FIELDS = ("instruction", "prompt_sequence_length", "target_sequence_length",
                     "inference_temperature", "seed")


@dataclass
class Config:
    """Bulk inference: which model on which data to which file (this stage's own
    options), and how, from the pipeline's `params` (instruction, prompt_sequence_length,
    target_sequence_length, inference_temperature, seed, trust_remote_code)."""

    model: str  # base model: Vertex name, Hugging Face id or directory (also a merged model)
    eval_dataset: str  # file, directory, glob or fsspec URL of eval records
    output: str  # the eval_results_*.jsonl to write
    params: PipelineParams = field(default_factory=PipelineParams)
    adapter: str | None = None  # a peft LoRA adapter directory on top of `model`
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def temperature(self) -> float:
        return self.params.inference_temperature

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise RlhfkitError(f"batch_size must be > 0, got {self.batch_size}")

    def prediction_key(self) -> dict:
        """What predictions depend on, by content: the model's and adapter's files (a
        retrained policy in the same directory is a different model), the eval data's
        bytes and the generation parameters; batch_size only reorders the work."""
        from rlhfkit.runstate import data_fingerprint, model_fingerprint

        model, adapter = resolve_model_and_adapter(self.model, self.adapter)
        return {"model": model_fingerprint(model), "adapter": model_fingerprint(adapter),
                "eval": data_fingerprint(self.eval_dataset),
                **self.params.subset(*PREDICTION_FIELDS)}


# -- loading -------------------------------------------------------------------------------

def _is_adapter_dir(path: str | None) -> bool:
    return path is not None and (Path(path) / "adapter_config.json").is_file()


def _is_full_model_dir(path: str) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("model*.safetensors*"))


def resolve_model_and_adapter(model: str, adapter: str | None) -> tuple[str, str | None]:
    """`--model ADAPTER_DIR` alone is read as the adapter on the base it names in
    adapter_config.json (`base_model_name_or_path`), so `rlhfkit infer --model RUN/policy`
    does what it says. A directory with a full (merged) model is loaded as it is."""
    from rlhfkit.models import check_adapter_weights, resolve_model_reference

    if adapter is None and _is_adapter_dir(model) and not _is_full_model_dir(model):
        base = json.loads((Path(model) / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
        if not base:
            raise RlhfkitError(f"{model}: a LoRA adapter that does not name its base model; "
                               "pass the base with --model and this directory with --adapter")
        model, adapter = base, model
    if adapter is not None and not _is_adapter_dir(adapter):
        raise RlhfkitError(f"{adapter}: not a LoRA adapter directory (no adapter_config.json)")
    if adapter is not None:
        check_adapter_weights(adapter)
    return resolve_model_reference(model), adapter


def load_model(cfg: Config, device: torch.device):
    """(tokenizer, model) in eval mode; a LoRA adapter is merged into the weights, which
    makes generation as fast as the base model's (the base weights are not reused)."""
    from rlhfkit.models import load_causal_lm, load_tokenizer, pick_dtype

    model_ref, adapter = resolve_model_and_adapter(cfg.model, cfg.adapter)
    # The adapter directory may carry its own tokenizer (added tokens); prefer it.
    tok_src = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() \
        else model_ref
    tokenizer = load_tokenizer(tok_src, trust_remote_code=cfg.params.trust_remote_code)
    model = load_causal_lm(model_ref, trust_remote_code=cfg.params.trust_remote_code,
                           dtype=pick_dtype(device))
    if adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        except (OSError, ValueError, RuntimeError) as exc:
            raise RlhfkitError(f"{adapter}: cannot apply this adapter to {model_ref}: "
                               f"{str(exc).strip().splitlines()[0]}") from exc
    return tokenizer, model.to(device).eval()


def _generation_config(tokenizer, model, cfg: Config):
    """A generation config that inherits nothing from the checkpoint's own
    generation_config.json (Llama-2's sets temperature 0.6 / top_p 0.9): greedy means
    argmax and sampling means plain softmax(logits / temperature)."""
    from transformers import GenerationConfig

    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    sampling = {"do_sample": True, "temperature": cfg.temperature, "top_k": 0, "top_p": 1.0} \
        if cfg.temperature > 0 else {"do_sample": False}
    return GenerationConfig(
        max_new_tokens=cfg.params.target_sequence_length, num_beams=1, repetition_penalty=1.0,
        eos_token_id=eos or None, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, **sampling)


# -- generation ----------------------------------------------------------------------------

def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (little padding, and
    an out-of-memory error shows up in the first batch, not after an hour)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def decode_new_tokens(tokenizer, new_ids: torch.Tensor, eos_ids: list[int]) -> list[str]:
    """Text of each row of generated ids, cut at the first EOS (generate pads finished
    rows with pad_token_id, which may differ from EOS)."""
    texts = []
    for row in new_ids.tolist():
        for j, t in enumerate(row):
            if t in eos_ids:
                row = row[:j]
                break
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], cfg: Config,
             done: dict[int, str] | None = None, on_batch=None) -> list[str]:
    """Predictions for `prompts`, in their order. `done` holds predictions already made
    (by index); `on_batch(indices, texts)` is called after every batch."""
    from rlhfkit.generate import decode
    from rlhfkit.models import encode_prompts

    done = dict(done or {})
    gen_cfg = _generation_config(tokenizer, model, cfg)
    eos_ids = list(gen_cfg.eos_token_id or [])
    todo = [i for i in range(len(prompts)) if i not in done]
    if not todo:  # killed after the last batch, before the output was written
        return [done[i] for i in range(len(prompts))]
    lengths = [len(ids) for ids in tokenizer([prompts[i] for i in todo])["input_ids"]]
    batches = [[todo[j] for j in b] for b in length_sorted_batches(lengths, cfg.batch_size)]
    device = next(model.parameters()).device
    if cfg.temperature > 0:
        torch.manual_seed(cfg.params.seed)
    with _progress(len(prompts), len(done)) as advance:
        for batch in batches:
            enc = encode_prompts(tokenizer, [prompts[i] for i in batch],
                                 cfg.params.prompt_sequence_length)
            enc = {k: v.to(device) for k, v in enc.items()}
            if model.config.is_encoder_decoder:
                # the prompt is the encoder's input: the prediction follows the decoder's
                # start token
                new = model.generate(**enc, generation_config=gen_cfg)[:, 1:]
            else:  # rows leave the batch as they end (rlhfkit.generate): same greedy tokens
                new = decode(model, enc["input_ids"], enc["attention_mask"],
                             gen_cfg.max_new_tokens, eos_ids, tokenizer.pad_token_id,
                             cfg.temperature)
            texts = decode_new_tokens(tokenizer, new, eos_ids)
            done.update(zip(batch, texts, strict=True))
            if on_batch is not None:
                on_batch(batch, texts)
            advance(len(batch))
    return [done[i] for i in range(len(prompts))]


class _progress:
    """A rich progress bar counting prompts (on stderr, main process only)."""

    def __init__(self, total: int, completed: int):
        self.total, self.completed = total, completed

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress("generating", BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=log.console,
                            disable=not log.is_main_process(), transient=True)
        self.bar.__enter__()
        self.task = self.bar.add_task("generating", total=self.total, completed=self.completed)
        return lambda n: self.bar.advance(self.task, n)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


# -- resume --------------------------------------------------------------------------------

def _partial_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.partial")


def _read_partial(path: Path, key: str, prompts: list[str]) -> dict[int, str]:
    """Predictions of an interrupted run with the same settings; {} if none match."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        if not lines or json.loads(lines[0]).get("key") != key:
            return {}
    except json.JSONDecodeError:
        return {}
    done = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # the line being written when the process died
        i = rec.get("index")
        if isinstance(i, int) and 0 <= i < len(prompts) and rec.get("prompt") == prompts[i]:
            done[i] = rec["prediction"]
    return done


class _PartialWriter:
    """Appends finished batches to the partial file, each flushed to disk; a failed write
    (a full disk) is one line naming the file."""

    def __init__(self, path: Path, key: str, fresh: bool):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(path, "w" if fresh else "a", encoding="utf-8")  # noqa: SIM115
            if fresh:
                self.f.write(json.dumps({"key": key}) + "\n")
        except OSError as exc:
            raise write_error(exc, path) from exc

    def __call__(self, prompts: list[str], batch: list[int], texts: list[str]) -> None:
        try:
            for i, text in zip(batch, texts, strict=True):
                self.f.write(json.dumps({"index": i, "prompt": prompts[i], "prediction": text},
                                        ensure_ascii=False) + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as exc:
            raise write_error(exc, self.path) from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the error that matters was raised already
            self.f.close()


# -- the stage -----------------------------------------------------------------------------

def output_record(prompt: str, target: str, prediction: str) -> dict:
    """One line of Vertex's bulk-inference output."""
    return {"inputs": {"inputs_pretokenized": prompt, "targets_pretokenized": target},
            "prediction": prediction}


def run(cfg: Config) -> Path:
    """Generate a prediction for every eval record; write cfg.output; return its path."""
    from rlhfkit.data import load_dataset, prompt_text
    from rlhfkit.runstate import config_hash

    cfg.validate()
    check_output_file(cfg.output)  # before any work: not after an hour of generation
    records = load_dataset(cfg.eval_dataset, "eval")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model = load_model(cfg, device)
    prompts = [prompt_text(r, cfg.params.instruction, tokenizer) for r in records]
    targets = [r.get(TARGET_KEY) for r in records]
    targets = ["" if t is None else str(t) for t in targets]

    key = config_hash(cfg.prediction_key())
    partial = _partial_path(cfg.output)
    done = _read_partial(partial, key, prompts)
    if done:
        log.info(f"resuming bulk inference: {len(done)} of {len(prompts)} prompts already done")
    writer = _PartialWriter(partial, key, fresh=not done)
    try:
        predictions = generate(model, tokenizer, prompts, cfg, done,
                               on_batch=lambda b, t: writer(prompts, b, t))
    finally:
        writer.close()
    atomic_write_jsonl(cfg.output, (output_record(p, t, y) for p, t, y
                                    in zip(prompts, targets, predictions, strict=True)))
    partial.unlink(missing_ok=True)
    log.info(f"wrote {len(predictions)} predictions to {cfg.output}")
    return Path(cfg.output)
