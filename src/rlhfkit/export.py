"""`rlhfkit export` and `deploy_model`: the tuned policy as one plain transformers model.

Vertex's pipeline ends with "Upload and Deploy Tuned Model": the tuned model goes to the
Model Registry and, with `deploy_model` (true by default), to an endpoint. Locally the
counterpart is a directory any tool can load without rlhfkit or peft: `RUN/model/`
(safetensors, config, tokenizer), which `AutoModelForCausalLM.from_pretrained`, vLLM and
`rlhfkit serve` read as they are.

RUN/policy/ holds one of three things, and each is exported as cheaply as it allows:
- `merged/` already written (`merge_adapter: true`): its files are hard-linked (copied
  across file systems), no model is loaded;
- a full model (`policy_lora_dim: 0`): the same, from RUN/policy/;
- a LoRA adapter: the base is loaded in the dtype it was saved in (a bf16 Llama stays
  bf16: the export is the base's size, not twice it), the adapter merged once
  (W + B A * alpha / r, peft's `merge_and_unload`) and saved.
The export is built in a hidden directory next to the target and renamed into place, so an
interrupted export leaves nothing half-written. `rlhfkit.json` in the export keeps what
serving needs from training: the instruction and the sequence lengths.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rlhfkit import log
from rlhfkit.errors import RlhfkitError
from rlhfkit.io import atomic_write_json, check_output_dir
from rlhfkit.runstate import META_FILE  # what training knew: instruction, lengths, base model

MODEL_DIR = "model"  # RUN/model/: where deploy_model writes the export
DEPLOY_DONE = Path("deploy") / "DONE"  # RUN/deploy/DONE: which policy RUN/model/ came from


def deploy_key(run: Path) -> dict:
    """What RUN/model/ depends on: the finished policy (its DONE marker's hash)."""
    from rlhfkit.runstate import done_hash

    return {"policy": done_hash(run / "policy" / "DONE")}


def current_export(run: Path) -> bool:
    """RUN/model/ exists and was exported from the policy now in RUN/policy/."""
    from rlhfkit.runstate import config_hash, is_done

    return _is_full_model(run / MODEL_DIR) and is_done(run / DEPLOY_DONE,
                                                       config_hash(deploy_key(run)))


@dataclass
class Source:
    """What a run, policy or model directory holds, for export and serving."""

    model: str  # base model reference (or the full model directory itself)
    adapter: str | None  # LoRA adapter directory on top of `model`, if any
    full_dir: str | None  # a directory that already is a full transformers model
    meta: dict  # RUN/policy/rlhfkit.json (instruction, lengths), or {}


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _is_full_model(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("model*.safetensors*"))


def _read_meta(path: Path) -> dict:
    try:
        return json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def resolve_source(path: str | Path) -> Source:
    """A run directory (RUN/model/ if exported, else RUN/policy/), a policy directory
    (adapter or full model), or any model directory / Hugging Face id."""
    p = Path(path).expanduser()
    if (p / "params.json").is_file() and (p / "policy").is_dir():  # a run directory
        if current_export(p):
            return resolve_source(p / MODEL_DIR)
        if _is_full_model(p / MODEL_DIR):  # a policy trained again since the export
            log.notice(f"{p / MODEL_DIR} is older than {p / 'policy'}: using the policy")
        p = p / "policy"
        if not (p / "DONE").is_file():
            raise RlhfkitError(f"{path}: the policy stage has not finished (no policy/DONE); "
                               "run `rlhfkit run` to the end first")
    if p.is_dir():
        meta = _read_meta(p)
        if meta.get("merged") and _is_full_model(p / meta["merged"]):
            return Source(str(p / meta["merged"]), None, str(p / meta["merged"]), meta)
        if _is_adapter(p) and not _is_full_model(p):
            from rlhfkit.infer import resolve_model_and_adapter

            base, adapter = resolve_model_and_adapter(str(p), None)
            return Source(base, adapter, None, meta)
        if _is_full_model(p):
            return Source(str(p), None, str(p), meta)
        raise RlhfkitError(f"{path}: neither a run directory, a LoRA adapter nor a "
                           "transformers model directory (config.json + *.safetensors)")
    from rlhfkit.models import resolve_model_reference

    ref = resolve_model_reference(str(path))  # a Vertex name or a hub id
    return Source(ref, None, None, {})


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hard links where possible: exporting a merged model costs no disk and no time."""
    for entry in src.iterdir():
        if entry.is_dir() or entry.name in ("DONE", META_FILE) or entry.name.startswith("."):
            continue  # checkpoints, markers and hidden temp dirs are not the model
        try:
            os.link(entry, dest / entry.name)
        except OSError:
            shutil.copy2(entry, dest / entry.name)


def _saved_dtype(model_ref: str, trust_remote_code: bool):
    """The dtype the base was saved in (config.dtype), float32 if it does not say."""
    import torch
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RlhfkitError(f"{model_ref}: cannot read config: {exc}") from exc
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _merge_into(src: Source, dest: Path, trust_remote_code: bool) -> None:
    from peft import PeftModel

    from rlhfkit.models import load_causal_lm, load_tokenizer

    tok_src = src.adapter if (Path(src.adapter) / "tokenizer_config.json").is_file() \
        else src.model
    tokenizer = load_tokenizer(tok_src, trust_remote_code=trust_remote_code)
    model = load_causal_lm(src.model, trust_remote_code=trust_remote_code,
                           dtype=_saved_dtype(src.model, trust_remote_code))
    try:
        model = PeftModel.from_pretrained(model, src.adapter).merge_and_unload()
    except (OSError, ValueError, RuntimeError) as exc:
        raise RlhfkitError(f"{src.adapter}: cannot apply this adapter to {src.model}: "
                           f"{str(exc).strip().splitlines()[0]}") from exc
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))


def export(source: str | Path, output_dir: str | Path, overwrite: bool = False,
           trust_remote_code: bool = False) -> dict:
    """Write the merged model of `source` (see `resolve_source`) to `output_dir`.

    Returns {"output_dir", "how": "linked" | "merged", "seconds", "bytes"}."""
    t0 = time.monotonic()
    out = check_output_dir(output_dir)  # a file, a path under a file, unwritable: one line
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RlhfkitError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    src = resolve_source(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        if src.full_dir is not None:
            _link_or_copy(Path(src.full_dir), tmp)
            how = "linked"
        elif src.adapter is not None:
            log.info(f"merging {src.adapter} into {src.model} ...")
            _merge_into(src, tmp, trust_remote_code)
            how = "merged"
        else:
            raise RlhfkitError(f"{source}: a hub model needs no export; serve it directly")
        meta = {k: src.meta.get(k) for k in (
            "instruction", "prompt_sequence_length", "target_sequence_length", "base_model")}
        atomic_write_json(tmp / META_FILE, {"kind": "export", "source": str(source), **meta})
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"output_dir": str(out), "how": how, "seconds": time.monotonic() - t0,
            "bytes": size}


def describe(result: dict) -> str:
    """One line for the terminal: where, how, how big, how long."""
    return (f"exported ({result['how']}) to {result['output_dir']}: "
            f"{result['bytes'] / 1e6:.1f} MB in {result['seconds']:.1f} s")
