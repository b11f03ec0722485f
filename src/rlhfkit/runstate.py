"""Run-directory bookkeeping shared by every stage: DONE markers, checkpoints, RNG state.

A stage is finished when its `DONE` marker holds the hash of the parameters it depends
on; a rerun with the same hash skips it, a changed parameter reruns it. The marker is
written last, after every output, so a killed stage is never marked done. Checkpoints are
directories written atomically (`checkpoint-N/` appears complete or not at all); the
newest one is where an interrupted stage resumes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.io import atomic_dir, atomic_write_text

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


# -- checkpoints -----------------------------------------------------------------------

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
                    keep: int = 2) -> Path:
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
