"""Errors trtmix raises on purpose.

Every user-facing error says what was wrong, what was expected and how to fix it.  The CLI prints the message of a
``TrtmixError`` and exits with code 2; anything else is a bug: one message with the version, the command and where
to report it, and the traceback with ``--verbose``.
"""

from __future__ import annotations


class TrtmixError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback."""

    def __init__(self, what: str, *, expected: str | None = None, fix: str | None = None) -> None:
        parts = [what]
        if expected:
            parts.append(f"Expected: {expected}")
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__("\n".join(parts))


class ModelLoadError(TrtmixError):
    """An ONNX file or a ``MODULE:FUNCTION`` model factory could not be loaded."""


class ExportError(TrtmixError):
    """A torch model could not be exported to ONNX, or the export does not match torch."""


class PlanError(TrtmixError):
    """A precision plan is malformed or does not fit the model."""


class CalibrationError(TrtmixError):
    """Calibration data is missing, malformed or not finite."""


class CompileError(TrtmixError):
    """A plan cannot be written into the graph (missing ranges, unsupported model)."""


class BackendUnavailableError(TrtmixError):
    """The requested backend is not installed on this host."""


class BackendError(TrtmixError):
    """A backend failed to build, run or time a model."""


class JobInterruptedError(TrtmixError):
    """The user pressed Ctrl-C (SIGINT) during a job; what was measured is kept for the rerun."""

    exit_code = 130  # the shell's convention for a process ended by SIGINT

    def __init__(self, output: object, stage: str | None = None) -> None:
        during = f" during {stage}" if stage else ""
        super().__init__(
            f"interrupted{during}. What was finished is kept: the export (stamped), the calibration (cached) and every "
            f"probe measured so far ({output}/journal.sqlite).",
            fix="rerun the same command to resume; nothing finished is done twice",
        )


class ResourceError(TrtmixError):
    """The machine ran out of memory or disk space during a step of a job."""
