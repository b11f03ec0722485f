"""One place that prints to the user: stderr, and only on the main process of a
multi-process (torchrun) run so N ranks do not print N copies."""

from __future__ import annotations

import os

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def info(msg: str) -> None:
    if is_main_process():
        console.print(msg, markup=False)


def notice(msg: str) -> None:
    """A one-line heads-up that changes nothing (e.g. a cloud-only parameter ignored)."""
    if is_main_process():
        console.print(f"notice: {msg}", style="cyan", markup=False)


def warn(msg: str) -> None:
    if is_main_process():
        console.print(f"warning: {msg}", style="yellow", markup=False)
