"""User-facing errors.

Every problem caused by what the user passed (a file, an option, a shape) raises a
subclass of :class:`OODCoreError` with a message that says what was wrong and what to
pass instead. The CLI prints these as one line; anything else is a bug and keeps its
traceback.
"""


class OODCoreError(Exception):
    """Base class for errors caused by user input, printed without a traceback."""


class DataError(OODCoreError, ValueError):
    """A dataset or user-supplied array/folder cannot be used as given."""


class DataNotFound(DataError):
    """A real dataset's files are not under the data root (or no data root was given)."""


class CheckpointError(OODCoreError):
    """A checkpoint file is missing, corrupt, foreign or does not fit the model."""


class TrainingDiverged(OODCoreError, FloatingPointError):
    """The training loss became NaN or infinite; nothing was saved from that run."""


class TrainingCancelled(OODCoreError):
    """The user cancelled a training run (see :mod:`ood_core.jobs`); nothing was saved from it."""


class UnknownNameError(OODCoreError, KeyError):
    """A method, dataset, score or OOD set name is not in its registry."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


def unknown(kind: str, name: str, choices) -> UnknownNameError:
    """Build the error for a name missing from a registry, listing the valid names."""
    return UnknownNameError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(choices))}")
