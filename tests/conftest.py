"""Shared test set-up: offline hub, one torch thread, tiny models built once per session."""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from conftest_policy import make_reward_model, write_prompts  # noqa: E402
from tiny_models import ARCHITECTURES, build_tiny_model, build_tiny_t5  # noqa: E402

COURSE_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "course_samples"
if not COURSE_SAMPLES.is_dir():  # CI clones the repo next to shared/
    COURSE_SAMPLES = Path(__file__).resolve().parents[1] / ".." / "shared" / "course_samples"


@pytest.fixture(scope="session")
def course_samples() -> Path:
    if not COURSE_SAMPLES.is_dir():
        pytest.skip("../shared/course_samples is not next to this checkout")
    return COURSE_SAMPLES


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every tiny architecture, built lazily once per session: {arch: directory}."""
    root = tmp_path_factory.mktemp("tiny_models")
    return _LazyModels(root)


class _LazyModels(dict):
    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, arch: str) -> Path:
        build = build_tiny_t5 if arch == "t5" else lambda p: build_tiny_model(arch, p)
        path = build(self.root / arch)
        self[arch] = path
        return path


@pytest.fixture(params=ARCHITECTURES)
def tiny_model_dir(request, tiny_model_dirs) -> Path:
    """Parametrised over every architecture."""
    return tiny_model_dirs[request.param]


@pytest.fixture
def tiny_llama_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]


# The policy tests' reward models and prompts (test_policy, test_rl_methods).
@pytest.fixture(scope="module")
def reward_models(tiny_model_dirs, tmp_path_factory):
    """{arch: reward-model directory}, a LoRA seq-cls adapter on the tiny base."""
    root = tmp_path_factory.mktemp("reward_models")

    class Lazy(dict):
        def __missing__(self, arch):
            self[arch] = make_reward_model(tiny_model_dirs[arch], root / arch)
            return self[arch]
    return Lazy()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl")

@pytest.fixture
def tiny_t5_dir(tiny_model_dirs) -> Path:
    """A tiny encoder-decoder (T5ForConditionalGeneration), built once per session."""
    return tiny_model_dirs["t5"]
