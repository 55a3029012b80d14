"""Content-based slide identity: renamed files keep their id, changed files get a new one.

Two schemes (`scheme=`):

``"quick"`` (default)
    SHA-256 over the file size in bytes, the modification time in ns, the first 1 MiB and the last 1 MiB of the
    file. Reads at most 2 MiB, so a 3 GB slide is identified in milliseconds. A rename or a move within one file
    system keeps size, mtime and content, hence the id; rewriting or touching the file changes the mtime, hence
    the id (a touched but unchanged file is recomputed once: the conservative side). A copy that does not
    preserve the mtime (``cp`` without ``-p``) gets a new id.
``"full"``
    SHA-256 of the whole content: the same bytes are the same slide wherever they live and whatever their mtime.
    Costs one full read of every slide per batch.

Ids are strings ``"quick:<32 hex>"`` or ``"sha256:<64 hex>"``, so ids of the two schemes never collide.
Only regular files have an id: a directory, FIFO or device named like a slide raises `MicrometsError`
(opening a FIFO would block the batch forever). A DICOM slide (a folder of ``.dcm`` instances, named by the folder
or one of its files) is the exception: its id is the SHA-256 of its instances' names and ids, in name order
(``"quick:"`` or ``"sha256:"`` as its instances'), so renaming or moving the folder keeps it.
"""

import hashlib
import os
import stat
from pathlib import Path

from micromets.errors import MicrometsError
from micromets.slide import check_not_special_file, dicom_files, dicom_folder

IDENTITY_SCHEMES = ("quick", "full")
SAMPLE_BYTES = 1 << 20  # head and tail sample of the quick scheme: 1 MiB each
_CHUNK_BYTES = 1 << 22


def _regular_file_stat(path: Path) -> os.stat_result:
    """`os.stat` of `path`, or `MicrometsError` when it is missing or not a regular file."""
    st = check_not_special_file(path)
    if stat.S_ISDIR(st.st_mode):
        raise MicrometsError(f"{path}: is a directory, not a slide file")
    return st


def slide_content_id(path: str | os.PathLike, scheme: str = "quick") -> str:
    """Return the content id of the slide file at `path` (see the module docstring for the two schemes).

    Raises `MicrometsError` naming the file when it is missing, unreadable or not a regular file.
    """
    if scheme not in IDENTITY_SCHEMES:
        raise MicrometsError(f"identity scheme {scheme!r} unknown (choose one of {', '.join(IDENTITY_SCHEMES)})")
    path = Path(path)
    folder = dicom_folder(path)
    if folder is not None:
        digest = hashlib.sha256(b"micromets-dicom-id/1\0")
        for instance in dicom_files(folder):
            digest.update(f"{instance.name}\0{_file_content_id(instance, scheme)}\0".encode())
        return f"{'sha256' if scheme == 'full' else 'quick'}:{digest.hexdigest()[:64 if scheme == 'full' else 32]}"
    return _file_content_id(path, scheme)


def _file_content_id(path: Path, scheme: str) -> str:
    """The content id of the one regular file at ``path``."""
    st = _regular_file_stat(path)
    try:
        with open(path, "rb") as fh:
            if scheme == "full":
                digest = hashlib.sha256()
                while chunk := fh.read(_CHUNK_BYTES):
                    digest.update(chunk)
                return f"sha256:{digest.hexdigest()}"
            digest = hashlib.sha256(b"micromets-quick-id/1\0")
            digest.update(st.st_size.to_bytes(8, "little"))
            digest.update(st.st_mtime_ns.to_bytes(16, "little", signed=True))
            digest.update(fh.read(SAMPLE_BYTES))
            if st.st_size > SAMPLE_BYTES:
                fh.seek(max(SAMPLE_BYTES, st.st_size - SAMPLE_BYTES))
                digest.update(fh.read(SAMPLE_BYTES))
            return f"quick:{digest.hexdigest()[:32]}"
    except OSError as err:
        raise MicrometsError(f"{path}: cannot read slide file ({err.strerror})") from err
