"""Files written whole or not at all: through a temporary file beside the target and a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable


def write_atomically(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Have ``write`` write a temporary file in ``path``'s folder, then rename it to ``path``.

    The rename (``os.replace``) is atomic on one file system: a reader of ``path`` sees the
    old file or the whole new one, never half of it. If ``write`` (or the rename) raises,
    ``path`` is left as it was and the temporary file is removed. The new file has the
    temporary file's mode, 0600. ``suffix`` ends the temporary file's name (a writer such
    as ``torch.save`` may need one).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".initaudit-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` in UTF-8 with :func:`write_atomically`."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_atomically(path, write)
