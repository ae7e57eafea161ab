"""The progress hooks of a training run, apart from the trainer so that a command line can subclass them cheaply."""

from __future__ import annotations

from typing import Any

__all__ = ["Callback"]


class Callback:
    """Progress hooks the command line implements (progress bar); the engine itself only logs epoch summaries."""

    def on_epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        """Epoch ``epoch`` (1-based) of ``epochs`` starts with ``done`` of its ``steps`` already run (resume)."""

    def on_step(self, metrics: dict[str, float]) -> None:
        """After every optimiser step: running ``loss``, ``top1`` (percent), ``images_per_s`` and ``lr``."""

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """The epoch's log record (what ``log.jsonl`` gets)."""
