"""Progress bars (rich) for fine-tuning, calibration and evaluation; silent when disabled."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator


class Progress:
    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._progress: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(file=sys.stderr), transient=False,
            )

    def __enter__(self) -> Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message)

    def warn(self, message: str) -> None:
        """Always shown, on stderr (through the progress console when bars are on, so they are not torn)."""
        if self._progress is not None:
            self._progress.console.print(f"[bold yellow]warning:[/] {message}", highlight=False)
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Any]:
        """Yields ``advance(n=1)``."""
        if self._progress is None:
            yield lambda n=1: None
            return
        tid = self._progress.add_task(description, total=total)
        try:
            yield lambda n=1: self._progress.advance(tid, n)
        finally:
            self._progress.update(tid, completed=total)

    def keras_callback(self, description: str, epochs: int) -> Any:
        """A Keras callback advancing one bar per epoch (``None`` when disabled)."""
        if self._progress is None:
            return None
        import keras

        prog = self._progress
        tid = prog.add_task(description, total=epochs)

        class _Bar(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                loss = (logs or {}).get("loss")
                prog.update(tid, advance=1, description=f"{description} (loss {loss:.4f})" if loss is not None else description)

        return _Bar()


__all__ = ["Progress"]
