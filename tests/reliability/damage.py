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


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def flip_chunk_checksum(path) -> int:
    """Flips a bit of the CRC32C that follows the first zstd frame in an OCDBT data file:
    the chunk before it still decompresses, so reading it fails its digest, whichever chunk
    it is and whatever its bytes (a flip inside the frame may fail in zstd instead). Returns
    the offset flipped."""
    contents = epath.Path(path).read_bytes()
    start = contents.find(ZSTD_MAGIC)
    if start < 0:
        raise ValueError(f"{path} holds no zstd frame")
    at = _zstd_frame_end(contents, start)
    flip_a_byte(path, at=at)
    return at


def _zstd_frame_end(data: bytes, start: int) -> int:
    """The offset just past the zstd frame at `start` (RFC 8878 section 3.1.1)."""
    descriptor = data[start + 4]
    single_segment = (descriptor >> 5) & 1
    content_size_bytes = (single_segment, 2, 4, 8)[descriptor >> 6]
    dictionary_id_bytes = (0, 1, 2, 4)[descriptor & 3]
    at = start + 5 + (not single_segment) + dictionary_id_bytes + content_size_bytes
    last = False
    while not last:
        header = int.from_bytes(data[at : at + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        at += 3 + (1 if kind == 1 else size)  # an RLE block stores its one byte
    return at + 4 * ((descriptor >> 2) & 1)  # the frame's own checksum, if it has one
