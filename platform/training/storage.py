"""Where Ray keeps the files of runs and sweeps: a folder or a URI, and for a folder a file system
that never leaves a file half written.

Ray rewrites its state files in place: Tune its experiment and searcher state after every step of
a sweep's loop, Ray Train its checkpoint snapshot after every checkpoint. A driver killed in the
middle of such a write (its machine lost, its session ended) leaves the file truncated, often
empty, and Tune's restore then fails to read it and silently starts a new, empty experiment
instead. On a storage folder (a path, not a URI) Ray is given :class:`WholeFileWrites`: every
file it writes goes to a temporary name beside it and is renamed into place once complete, so a
process killed at any moment leaves the previous version whole. Object stores (``s3://``,
``gs://``) replace an object only when its upload completes, and keep Ray's own file system.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path

import pyarrow
import pyarrow.fs
from fsspec.implementations.local import LocalFileSystem


def is_uri(storage: str | Path) -> bool:
    """Whether ``storage`` is a URI (``s3://...``), not a folder."""
    return "://" in str(storage)


def storage_uri(storage: str | Path) -> str:
    """A storage location for Ray: a URI (``s3://...``) as it is, a local folder made absolute."""
    return str(storage) if is_uri(storage) else str(Path(storage).expanduser().resolve())


def storage_filesystem(storage: str | Path) -> pyarrow.fs.FileSystem | None:
    """The file system for Ray's ``storage_filesystem`` beside ``storage_uri(storage)``: whole
    file writes for a local folder, ``None`` (Ray's choice by the URI's scheme) for a URI."""
    return None if is_uri(storage) else pyarrow.fs.PyFileSystem(WholeFileWrites())


class WholeFileWrites(pyarrow.fs.FSSpecHandler):
    """The local file system, with each file written under a temporary name in its folder
    (``.NAME.<random>.partial``) and renamed to its name when the writer closes it (the rename
    replaces a file in one step on POSIX). A writer killed before that leaves its ``.partial``
    file behind and the previous version of the file in place."""

    def __init__(self):
        super().__init__(LocalFileSystem())

    def open_output_stream(self, path: str, metadata) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(RenamedWhenClosed(path), mode="w")

    def copy_file(self, src: str, dest: str) -> None:
        with open(src, "rb") as source, RenamedWhenClosed(dest) as target:
            shutil.copyfileobj(source, target)


class RenamedWhenClosed(io.FileIO):
    """A binary file written as ``.NAME.<random>.partial`` beside ``path`` and renamed to
    ``path`` when closed."""

    def __init__(self, path: str):
        folder, name = os.path.split(path)
        self.path = path
        self.partial = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.partial")
        super().__init__(self.partial, "xb")  # permissions as for any new file (the umask's)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        os.replace(self.partial, self.path)
