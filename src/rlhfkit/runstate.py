"""The one stage machinery every stage shares: DONE markers, checkpoints (with RNG state),
resume, pruning, atomic publish, content identity and the run-directory lock.

A stage is finished when its `DONE` marker holds the hash of everything its outputs depend
on; a rerun with the same hash skips it, a changed input reruns it. The hash is taken over
*content*, never paths (`stage_key`): datasets by their bytes, models by their config and
weight files, upstream stages by their own DONE hash, so a copied or moved run directory
or model directory is still recognised, and a retrained upstream stage is never mistaken
for the old one. The marker is written last, inside the atomically published directory,
so a killed stage is never marked done.

    stage = Stage(RUN / "reward_model", key)
    if stage.is_done(): ...skip...
    found = stage.resume(accelerator)          # newest checkpoint with this key, RNG restored
    stage.save_checkpoint(step, write, state)  # checkpoint-N/ appears whole or not at all
    stage.publish(write)                       # outputs + DONE replace RUN/<stage>/ at once

One process at a time works in a run directory: `run_lock(RUN)` holds an OS lock
(`fcntl.flock` on RUN/.lock, released by the kernel when the holder dies, so a killed run
never leaves a stale lock); a second process stops at once, naming the holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit import log
from rlhfkit.errors import RlhfkitError
from rlhfkit.io import atomic_dir, atomic_write_json, atomic_write_text, expand_paths, read_bytes

META_FILE = "rlhfkit.json"  # a stage output's metadata (reward model, policy), next to it
DONE_FILE = "DONE"
LOCK_FILE = ".lock"
STATE_FILE = "state.json"  # inside checkpoint-N/: step, config_hash, rng and the stage's own
KEEP_CHECKPOINTS = 2  # newest checkpoints kept while a stage trains
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def config_hash(values: dict[str, Any]) -> str:
    """A short stable hash of JSON-able values (key order does not matter)."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def done_hash(marker: str | Path) -> str | None:
    marker = Path(marker)
    return marker.read_text().strip() if marker.is_file() else None


def is_done(marker: str | Path, h: str) -> bool:
    return done_hash(marker) == h


def mark_done(marker: str | Path, h: str) -> None:
    atomic_write_text(marker, h + "\n")


# -- content identity (never paths) -----------------------------------------------------------

DATASET_FIELDS = ("preference_dataset", "prompt_dataset", "eval_dataset")
MODEL_FIELDS = ("large_model_reference", "reward_model_reference", "model", "adapter",
                "reward_model_dir")
# Files of a model directory that do not change what it computes.
_NOT_MODEL_CONTENT = {"README.md", DONE_FILE, META_FILE}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_file() -> Path:
    root = os.environ.get("RLHFKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rlhfkit")
    return Path(root) / "file_hashes.json"


class _HashCache:
    """sha256 of files keyed by (absolute path, size, mtime_ns, inode): multi-GB weight files
    are hashed once, not on every run. The cache is an optimisation only; an unreadable or
    unwritable cache file is ignored."""

    def __init__(self) -> None:
        self.path, self.entries, self.dirty = _cache_file(), {}, False
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries = loaded if isinstance(loaded, dict) else {}

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        if key not in self.entries:
            self.entries[key], self.dirty = _sha256_file(path), True
        return self.entries[key]

    def save(self) -> None:
        if self.dirty:
            with contextlib.suppress(OSError, RlhfkitError):
                atomic_write_json(self.path, self.entries)


def model_fingerprint(ref: str | None) -> str | None:
    """What a model reference *is*: for a local directory, a hash of its top-level files'
    names, sizes and sha256 (config, weights, tokenizer, adapter); for a Hugging Face id or
    a Vertex name, the resolved id. Hashes are cached (see `_HashCache`)."""
    if ref is None:
        return None
    path = Path(str(ref)).expanduser()
    if not path.is_dir():
        from rlhfkit.models import resolve_model_reference

        try:
            return "hub:" + resolve_model_reference(str(ref))
        except RlhfkitError:
            return "ref:" + str(ref)
    cache = _HashCache()
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name not in _NOT_MODEL_CONTENT)
    content = {p.name: [p.stat().st_size, cache.sha256(p)] for p in files}
    cache.save()
    return "dir:" + config_hash(content)


def data_fingerprint(spec: str | None) -> str | None:
    """A hash of a dataset's bytes (its files in order, not their names or location), so an
    edited file reruns the stages that read it and a moved one does not."""
    if not spec:
        return None
    h = hashlib.sha256()
    for path in expand_paths(spec):
        h.update(hashlib.sha256(read_bytes(path)).digest())
    return h.hexdigest()[:16]


def content_values(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with dataset and model references replaced by their content fingerprints
    and `output_dir` dropped: what a DONE hash or a resume key may depend on."""
    out = {}
    for k, v in values.items():
        if k == "output_dir":
            continue
        if k in DATASET_FIELDS:
            out[k] = data_fingerprint(v)
        elif k in MODEL_FIELDS:
            out[k] = model_fingerprint(v)
        else:
            out[k] = v
    return out


def stage_key(values: dict[str, Any]) -> str:
    """The DONE hash of a stage whose outputs depend on `values` (content, not paths)."""
    return config_hash(content_values(values))


# -- checkpoints (low level; `Stage` below is what stages use) --------------------------------

def checkpoints(stage_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `stage_dir`, oldest first, as (step, path)."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in stage_dir.iterdir()
             if p.is_dir() and (m := _CKPT.match(p.name))]
    return sorted(found)


def latest_checkpoint(stage_dir: str | Path) -> tuple[int, Path] | None:
    found = checkpoints(stage_dir)
    return found[-1] if found else None


def save_checkpoint(stage_dir: str | Path, step: int, write: Callable[[Path], None],
                    keep: int = KEEP_CHECKPOINTS) -> Path:
    """Write `checkpoint-{step}/` atomically with `write(tmp_dir)`, keep the newest `keep`."""
    path = Path(stage_dir) / f"checkpoint-{step}"
    with atomic_dir(path) as tmp:
        write(tmp)
    for _, old in checkpoints(stage_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def remove_checkpoints(stage_dir: str | Path) -> None:
    for _, p in checkpoints(stage_dir):
        shutil.rmtree(p, ignore_errors=True)


# -- RNG state (Python, NumPy, torch), so a resumed run draws the same numbers ----------

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- the stage ---------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """A checkpoint a stage resumes from: its step, directory and state.json."""

    step: int
    path: Path
    state: dict[str, Any] = field(default_factory=dict)


def _barrier(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _is_main(accelerator) -> bool:
    return accelerator.is_main_process if accelerator is not None else log.is_main_process()


@dataclass
class Stage:
    """RUN/<stage>/ of one stage run with DONE hash `key`. Same names and behaviour for
    the reward model, the policy and bulk inference:

    - `is_done()`: DONE holds `key`: skip.
    - `save_checkpoint(step, write, state)`: checkpoint-{step}/ written atomically by
      `write(tmp)` plus state.json (step, config_hash = key, RNG state, `state`); the
      newest `keep` are kept.
    - `resume(accelerator)`: the newest checkpoint made with `key` (RNG state restored),
      or None; checkpoints made with another key are removed (after every rank looked).
    - `publish(write)`: the final outputs written by `write(tmp)` and DONE replace the
      stage directory in one rename (checkpoints go with the old directory); until then
      the old outputs and their old DONE stay, a consistent pair.
    """

    dir: Path
    key: str
    keep: int = KEEP_CHECKPOINTS

    def __post_init__(self) -> None:
        self.dir = Path(self.dir)

    @property
    def marker(self) -> Path:
        return self.dir / DONE_FILE

    def is_done(self) -> bool:
        return is_done(self.marker, self.key)

    def mark_done(self) -> None:
        mark_done(self.marker, self.key)

    def save_checkpoint(self, step: int, write: Callable[[Path], None],
                        state: dict[str, Any] | None = None) -> Path:
        def write_all(tmp: Path) -> None:
            write(tmp)
            atomic_write_json(tmp / STATE_FILE, {**(state or {}), "step": step,
                                                 "config_hash": self.key, "rng": rng_state()})

        return save_checkpoint(self.dir, step, write_all, keep=self.keep)

    def resume(self, accelerator=None) -> Checkpoint | None:
        found = latest_checkpoint(self.dir)
        state = None
        if found is not None:
            with contextlib.suppress(OSError, ValueError):
                state = json.loads((found[1] / STATE_FILE).read_text(encoding="utf-8"))
        if found is not None and isinstance(state, dict) \
                and state.get("config_hash") == self.key:
            if "rng" in state:
                set_rng_state(state["rng"])
            log.info(f"{self.dir.name}: resuming from {found[1]} (step {found[0]})")
            return Checkpoint(found[0], found[1], state)
        if found is not None:
            _barrier(accelerator)
            if _is_main(accelerator):
                log.notice(f"{self.dir}: removing checkpoints made with other inputs")
                remove_checkpoints(self.dir)
            _barrier(accelerator)
        return None

    def publish(self, write: Callable[[Path], None]) -> None:
        with atomic_dir(self.dir) as tmp:
            write(tmp)
            mark_done(tmp / DONE_FILE, self.key)


# -- the run-directory lock --------------------------------------------------------------------

_HELD: dict[str, list] = {}  # resolved RUN -> [fd, depth]: the pipeline's stages re-enter


def _holder_line() -> str:
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"PID {os.getpid()} on {socket.gethostname()}, started {started}\n"


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold RUN/.lock exclusively for the block. Only the main process of a multi-process
    run locks (the other ranks are its helpers). Re-entrant within one process."""
    if not log.is_main_process():
        yield
        return
    run = Path(run_dir)
    key = str(run.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    run.mkdir(parents=True, exist_ok=True)
    lock = run / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's line stays
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise RlhfkitError(f"{run}: another rlhfkit process is working in this run "
                               f"directory ({holder or 'holder not recorded yet'}); wait for "
                               "it to finish or use another --output-dir") from None
        raise RlhfkitError(f"{lock}: cannot lock: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_line().encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # releases the flock; the file stays (unlinking would race a waiter)


def lock_if_run_dir(directory: str | Path):
    """`run_lock(directory)` when it is a run directory (it holds params.json), else no
    lock: a stage command writing into a run (`infer -o RUN/eval_results_tuned.jsonl`)
    must not race `rlhfkit run`, but a plain folder gets no `.lock` file left in it."""
    if (Path(directory) / "params.json").is_file():
        return run_lock(directory)
    return contextlib.nullcontext()

