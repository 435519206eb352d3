"""The one family of errors a user fixes from the message alone (torch-, Hydra- and MLflow-free).

Every room raises a subclass of `CifarSweepError` for a mistake the user can correct: a config key,
a data path, a store, a checkpoint, a run another process holds, a full disk. Commands and the entry
point catch this one base and print `<command>: <message><hint>` as one line; anything else is a bug
and keeps its traceback. A subclass may also derive from the builtin it stands for (`ValueError`,
`OSError`, ...) so that code catching the builtin keeps working.
"""

from __future__ import annotations


class CifarSweepError(Exception):
    """A user-fixable problem. `hint` says what to do where the message alone does not."""

    hint: str = ""

    def __init__(self, message: str = "", hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        """The message and its hint on one line (the first line of a multi-line message)."""
        text = str(self).strip()
        first = text.splitlines()[0] if text else type(self).__name__
        return first + self.hint
