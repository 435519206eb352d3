"""Which Python versions the tool runs on, said before anything can fail obscurely.

hydra-core 1.3.8, the newest Hydra release, crashes while building its argument parser on Python
3.14 (facebookresearch/hydra#3121, still open). pyproject caps `requires-python` so pip refuses the
install; this check covers an install that skipped that (`--ignore-requires-python`, a copied venv)
with one line instead of Hydra's traceback.
"""

from __future__ import annotations

import sys

# The first Python the pinned Hydra cannot start on; keep in step with `requires-python`.
FIRST_UNSUPPORTED = (3, 14)


def unsupported_python_message(version: tuple[int, ...] | None = None) -> str | None:
    """One line saying why this Python cannot run the tool, or None when it can."""
    major_minor = tuple((version or sys.version_info)[:2])
    if major_minor < FIRST_UNSUPPORTED:
        return None
    found = ".".join(map(str, major_minor))
    return (f"Python {found} is not supported yet: hydra-core 1.3.8 crashes at start-up on Python 3.14+ "
            f"(hydra#3121); use Python 3.10-3.13, e.g. `python3.13 -m venv .venv`")


def require_supported_python(prog: str) -> None:
    message = unsupported_python_message()
    if message:
        raise SystemExit(f"{prog}: {message}")
