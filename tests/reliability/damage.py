"""The damage the checkpoint fault tests do to a file, on local disk or gs://."""

from etils import epath


def flip_a_byte(path, at: int | None = None) -> None:
    """Flips the lowest bit of the byte at offset `at` (the middle one by default)."""
    path = epath.Path(path)
    contents = bytearray(path.read_bytes())
    contents[len(contents) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(contents))


def truncate(path) -> None:
    path = epath.Path(path)
    path.write_bytes(path.read_bytes()[: path.stat().length // 2])


def delete(path) -> None:
    epath.Path(path).unlink()
