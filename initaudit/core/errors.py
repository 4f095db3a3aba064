"""Errors that mean "the target could not be loaded or run" (exit code 2)."""

from __future__ import annotations

import os
import traceback
from typing import Optional


class InitauditError(Exception):
    """A target that cannot be audited; ``str()`` is one line saying what and where."""

    def __init__(self, what: str, where: Optional[str] = None) -> None:
        self.what = what
        self.where = where
        super().__init__(f"{what} ({where})" if where else what)


class LoadError(InitauditError):
    """The target could not be imported, found or built."""


class InputError(InitauditError):
    """No example input could be supplied or inferred, or it is malformed."""


class ForwardError(InitauditError):
    """The model's forward or backward on the example input raised."""


def user_frame(exc: BaseException) -> Optional[str]:
    """``file:line`` of the deepest traceback frame outside torch and initaudit."""
    import torch

    own = (
        os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
        os.path.dirname(os.path.abspath(__file__)) + os.sep,
    )
    where = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = os.path.abspath(frame.filename)
        if path.startswith(own) or frame.filename.startswith("<frozen"):
            continue
        where = f"{frame.filename}:{frame.lineno}"
    return where


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
