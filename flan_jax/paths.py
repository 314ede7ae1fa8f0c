"""Every path a user gives (MODEL_DIR, checkpoints, CACHE_DIR, outputs, ...) goes through `path`.

A local path is expanded (`~`) and made absolute; `gs://bucket/...` stays a gs:// URL; any
other `scheme://` is refused up front, naming the setting, the value and what is supported,
so no layer below can turn `gs://bucket/run` into a local folder `./gs:/bucket/run`
(`os.path.abspath` and `pathlib.Path` both do that). The result is an `etils.epath.Path`, the
path type Orbax uses, so one object reads, writes, lists and renames on either storage.

One client for gs://: etils.epath reaches gs:// through TensorFlow's tf.io.gfile when
TensorFlow is installed, unless `EPATH_USE_TF` is false. Importing this module sets it to
false, so every gs:// path of flan_jax (Orbax's metadata, the integrity records, config.gin,
TensorBoard events, reports, the task cache) goes through gcsfs: the same credentials, the
same retries, and an endpoint that tests can point at an emulator (`STORAGE_EMULATOR_HOST`,
which TensorFlow's client cannot follow). Every flan_jax module that handles a user path
imports this one, and etils reads the variable only at its first filesystem call, whose
cached answer is dropped here in case some library made one earlier. Array data goes
through TensorStore's own GCS client (Orbax, ArrayRecord's reader likewise its own): those
libraries read gs:// natively. Only seqio's SentencePiece vocabulary and TFDS still read
through tf.io.gfile, which handles gs:// on real GCS.
"""

from __future__ import annotations

import importlib.util
import os
import re

os.environ["EPATH_USE_TF"] = "false"

from etils import epath  # noqa: E402 (after EPATH_USE_TF)
from etils.epath import backend, gpath  # noqa: E402

# etils caches whether to use TensorFlow at its first call; forget an answer given before.
getattr(gpath._is_tf_installed, "cache_clear", lambda: None)()

SUPPORTED = "a local path or gs://BUCKET/PATH"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//?)")


def path(value: str | os.PathLike, what: str) -> epath.Path:
    """The path a user gave for `what` (e.g. "MODEL_DIR"), as an epath.Path: local ones
    expanded and absolute, gs:// ones as given. ValueError for an empty value or another
    scheme, naming `what`, the value and what is supported."""
    text = os.fspath(value)
    if not text:
        raise ValueError(f"{what} is empty; give {SUPPORTED}")
    scheme = _SCHEME.match(text)
    if scheme is None:
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    name, slashes = scheme.group(1), scheme.group(2)
    if name == "gs" and slashes == "//":
        bucket = text[len("gs://") :].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"{what} {text!r} names no bucket; give gs://BUCKET/PATH")
        if not _gcsfs_installed():
            raise ValueError(
                f"{what} {text!r} is on Google Cloud Storage, which flan_jax reaches through "
                "gcsfs; install it (pip install -c constraints.txt -e .)"
            )
        return epath.Path(text)
    if slashes == "/":  # gs:/bucket/run: a URL that something cut down to a local-looking path
        raise ValueError(
            f"{what} {text!r} looks like a {name}:// URL missing a slash; give {SUPPORTED}"
        )
    raise ValueError(
        f"{what} {text!r}: the scheme {name}:// is not supported; give {SUPPORTED} "
        "(copy other storage to one of those first)"
    )


def _gcsfs_installed() -> bool:
    return importlib.util.find_spec("gcsfs") is not None


def is_local(p: str | os.PathLike) -> bool:
    """Whether `p` is on this machine's filesystem (not a gs:// URL)."""
    return _SCHEME.match(os.fspath(p)) is None


def forget_listings(p: str | os.PathLike) -> None:
    """Before listing or stat-ing files under a gs:// `p` that another client wrote
    (TensorStore writes Orbax's arrays): gcsfs answers from the directory listings it has
    cached, and would report those files missing."""
    if not is_local(p):
        backend.fsspec_backend.fs(os.fspath(p)).invalidate_cache()
