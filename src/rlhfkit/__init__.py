"""rlhfkit: the Vertex AI RLHF tuning pipeline, open and on your own hardware."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rlhfkit")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

from rlhfkit.errors import RlhfkitError  # noqa: E402
from rlhfkit.params import PipelineParams, steps_for_epochs  # noqa: E402

__all__ = ["PipelineJob", "PipelineParams", "RlhfkitError", "__version__", "steps_for_epochs"]


def __getattr__(name: str):
    # PipelineJob pulls in torch; import it only when a notebook asks for it.
    if name == "PipelineJob":
        from rlhfkit.pipeline import PipelineJob

        return PipelineJob
    raise AttributeError(f"module 'rlhfkit' has no attribute {name!r}")
