"""Opening the data files tasks read, on local disk or gs:// alike (etils.epath, the path
type Orbax and flan_jax's entry points use; the entry points have already refused any other
scheme, naming the variable that held it)."""

from __future__ import annotations

import io
import os

from etils import epath


def open_text(path: str | os.PathLike, *, newline: str | None = None, errors: str = "strict"):
    """A UTF-8 text file with the `newline` and `errors` handling of the builtin `open`
    (epath's own text mode takes neither)."""
    raw = epath.Path(path).open("rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors=errors, newline=newline)
