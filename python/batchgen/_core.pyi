"""Type stubs of the native module `batchgen._core` (python/src/lib.rs)."""

from typing import Optional

class BatchgenError(Exception):
    """A run could not start or finish; the message says why."""

class ConfigError(BatchgenError):
    """The job's parameters have problems: ``args[1]`` lists them as ``(field, message)``."""

class Run:
    """A run in progress on a thread of its own."""

    def wait(self, timeout: float) -> bool:
        """Waits at most ``timeout`` seconds, without the GIL; True once the run has ended."""
    def progress(self) -> tuple[int, int, int]:
        """``(rows written, rows in the input, rows failed)`` so far."""
    def cancel(self) -> None:
        """Stops the run; what was generated is in its saved work already."""
    def result(self) -> str:
        """The summary's report (JSON) once the run has ended; raises the run's error otherwise."""

def start(
    input: str, output: str, params: str, *, local_model: Optional[str] = None, seed: int = 0, fresh: bool = False
) -> Run:
    """Starts the CLI's file job; ``params`` is a JSON object of the config file's keys."""

def models() -> str:
    """The models the component knows, as JSON."""

def check_config(params: str) -> list[tuple[str, str]]:
    """Every problem with ``params`` (JSON), each ``(field, message)``."""
