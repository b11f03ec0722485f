"""rlhfkit.training: the TensorBoard writer a resumed stage reopens."""

from __future__ import annotations

from rlhfkit.training import TensorBoard


def _steps(log_dir) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    return [e.step for e in acc.Reload().Scalars("loss")]


def _killed_then_resumed(log_dir, purge: bool) -> list[int]:
    # A run logs steps 1..6, is killed, and resumes from its checkpoint at step 4.
    first = TensorBoard(log_dir)
    for step in range(1, 7):
        first.scalars({"loss": float(step)}, step)
    first.writer.close()
    second = TensorBoard(log_dir, purge_step=5 if purge else None)
    for step in range(5, 9):
        second.scalars({"loss": float(step)}, step)
    second.writer.close()
    return _steps(log_dir)


def test_resumed_writer_purges_steps_logged_after_the_checkpoint(tmp_path):
    assert _killed_then_resumed(tmp_path / "a", purge=True) == list(range(1, 9))
    # Without purge_step steps 5 and 6 show twice: what the purge is for.
    assert _killed_then_resumed(tmp_path / "b", purge=False) == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
