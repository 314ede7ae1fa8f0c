"""The damage the checkpoint fault tests do to a file."""

import os


def flip_a_byte(path) -> None:
    contents = bytearray(open(path, "rb").read())
    contents[len(contents) // 2] ^= 0x01
    open(path, "wb").write(contents)


def truncate(path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)
