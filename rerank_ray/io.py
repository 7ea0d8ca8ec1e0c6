"""Files on local disks and object stores, published so a half-written output never looks
finished.

Every path here is a local path or a URI: pyarrow's filesystems resolve ``s3://``,
``gs://``, ``abfs://``, ``hdfs://`` and ``file://``, and fsspec any other protocol it knows.
Credentials and endpoints come from the filesystem's usual environment (for S3 and
S3-compatible stores: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``); every Ray worker needs the same environment.

Publishing: on a local or shared filesystem a rename is atomic, files and directories alike.
Object stores have no rename: a file still appears whole (an upload becomes visible when it
completes), but a directory is copied in object by object, so there the run's manifest is the
commit point (a stage counts as done only once the manifest records it).

Parquet tables, read and written directly or through Ray Data, are in :mod:`rerank_ray.parquet`.

Example::

    write_json("s3://bucket/runs/seed/metrics.json", {"recall@10": 0.99})
    read_json("s3://bucket/runs/seed/metrics.json")
    # {'recall@10': 0.99}
"""

from __future__ import annotations

import contextlib
import io as stdio
import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

LOCAL = pafs.LocalFileSystem()


def is_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a filesystem by scheme (``s3://…``) rather than a local path."""
    return "://" in os.fspath(path)


def absolute_if_local(value: str) -> str:
    """``value`` made absolute when it names a file or folder that exists here; a URI, or a
    name that is not a local path (a Hub model or dataset), as given.

    Example:
        >>> absolute_if_local("s3://bucket/corpus.tsv"), absolute_if_local("BAAI/bge-m3")
        ('s3://bucket/corpus.tsv', 'BAAI/bge-m3')
        >>> absolute_if_local(".") == os.getcwd()
        True
    """
    if is_uri(value) or not os.path.exists(value):
        return value
    return os.path.abspath(value)


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding ``path``, and the path inside it.

    Example::

        resolve("s3://bucket/runs/seed")
        # (<pyarrow._s3fs.S3FileSystem ...>, 'bucket/runs/seed')
    """
    path = os.fspath(path)
    if not is_uri(path):
        return LOCAL, os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except pa.ArrowInvalid:  # a protocol pyarrow does not know: ask fsspec
        import fsspec

        filesystem, inner = fsspec.core.url_to_fs(path)
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem)), inner


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (Ray workers have other working directories); URIs as given."""
    path = os.fspath(path)
    return path.rstrip("/") if is_uri(path) else os.path.abspath(path)


def join(base: str | os.PathLike, *names: str) -> str:
    """``base/name/...`` for local paths and URIs alike."""
    base = os.fspath(base)
    if is_uri(base):
        return posixpath.join(base, *names)
    return os.path.join(base, *names)


def split(path: str | os.PathLike) -> tuple[str, str]:
    """``(parent, name)`` of a local path or URI."""
    path = os.fspath(path)
    if is_uri(path):
        parent, _, name = path.rstrip("/").rpartition("/")
        return parent, name
    return os.path.split(os.path.abspath(path))


def exists(path: str | os.PathLike) -> bool:
    return file_info(path).type != pafs.FileType.NotFound


def is_dir(path: str | os.PathLike) -> bool:
    return file_info(path).type == pafs.FileType.Directory


def list_files(path: str | os.PathLike) -> list[str]:
    """The files directly inside the folder ``path``, sorted; ``[]`` when it is missing."""
    filesystem, inner = resolve(path)
    if filesystem.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(inner))
    root = str(path).rstrip("/")
    return sorted(join(root, i.base_name) for i in infos if i.type == pafs.FileType.File)


def makedirs(path: str | os.PathLike) -> None:
    """Create a directory and its parents (on an object store: a directory marker)."""
    filesystem, inner = resolve(path)
    filesystem.create_dir(inner, recursive=True)


def not_a_folder(path: str | os.PathLike) -> str | None:
    """Why :func:`makedirs` cannot make ``path`` a folder: it, or a local folder above it,
    is a file; ``None`` when it is a folder or can become one.

    Example:
        >>> import os, tempfile
        >>> file = os.path.join(tempfile.mkdtemp(), "notes.txt")
        >>> open(file, "w").close()
        >>> not_a_folder(file), not_a_folder(os.path.dirname(file))
        ('exists and is not a directory', None)
        >>> not_a_folder(os.path.join(file, "x")) == f"{file} is not a directory"
        True
    """
    path = os.fspath(path)
    kind = file_info(path).type
    if kind == pafs.FileType.Directory:
        return None
    if kind != pafs.FileType.NotFound:
        return "exists and is not a directory"
    if is_uri(path):  # an object store's folders are prefixes: any key may gain children
        return None
    parent = os.path.dirname(os.path.normpath(path))
    while parent and not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        return f"{parent} is not a directory"
    return None


def temporary_sibling(path: str | os.PathLike) -> str:
    """A unique hidden name next to ``path``, on the same filesystem so a rename is atomic."""
    directory, name = split(path)
    return join(directory, f".{name}.tmp-{uuid.uuid4().hex[:8]}")


def discard(path: str | os.PathLike) -> None:
    """Remove a file or directory if it exists (a local link itself, not what it points to)."""
    path = os.fspath(path)
    if not is_uri(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
        return
    filesystem, inner = resolve(path)
    kind = filesystem.get_file_info(inner).type
    if kind == pafs.FileType.Directory:
        filesystem.delete_dir(inner)
    elif kind == pafs.FileType.File:
        filesystem.delete_file(inner)


def publish(tmp_path: str, final_path: str) -> None:
    """Move ``tmp_path`` to ``final_path``, replacing what was there.

    Atomic on local and shared filesystems. On an object store a file still appears whole;
    a directory is copied in (server-side) after the old one is removed.
    """
    if not is_uri(final_path):
        if os.path.isdir(tmp_path) and os.path.exists(final_path):
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = temporary_sibling(final_path)
            os.replace(final_path, old)
            os.replace(tmp_path, final_path)
            discard(old)
        else:
            os.replace(tmp_path, final_path)
        return
    filesystem, source = resolve(tmp_path)
    _, target = resolve(final_path)
    if filesystem.get_file_info(source).type != pafs.FileType.Directory:
        filesystem.move(source, target)
        return
    discard(final_path)
    filesystem.create_dir(target, recursive=True)
    for info in filesystem.get_file_info(pafs.FileSelector(source, recursive=True)):
        if info.type == pafs.FileType.File:
            filesystem.copy_file(info.path, target + info.path[len(source) :])
    filesystem.delete_dir(source)


@contextlib.contextmanager
def atomic_path(final_path: str) -> Iterator[str]:
    """Yield a temporary path to write; publish it at ``final_path`` only on success.

    Example:
        >>> import os, tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "metrics.json")
        >>> with atomic_path(target) as tmp:
        ...     _ = open(tmp, "w").write("{}")
        ...     os.path.exists(target)  # not published yet
        False
        >>> open(target).read()
        '{}'
    """
    tmp_path = temporary_sibling(final_path)
    try:
        yield tmp_path
    except BaseException:
        discard(tmp_path)
        raise
    publish(tmp_path, final_path)


def copy_tree(source: str, target: str) -> None:
    """Copy the visible files of directory ``source`` into a new directory ``target``, across
    filesystems too (local to object store and back).

    The target's files are always its own: local to local, each file is a reflink (its
    blocks shared copy-on-write, where the filesystem supports it) or a byte copy, never a
    hard link, so changing or truncating a source file later leaves the copy as it was.
    """
    if not is_uri(source) and not is_uri(target):
        os.makedirs(target)
        for name in sorted(os.listdir(source)):
            path = os.path.join(source, name)
            if not name.startswith(".") and os.path.isfile(path):
                _copy_file(path, os.path.join(target, name))
        return
    source_fs, source_inner = resolve(source)
    target_fs, target_inner = resolve(target)
    target_fs.create_dir(target_inner, recursive=True)
    for info in source_fs.get_file_info(pafs.FileSelector(source_inner)):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.File and not name.startswith("."):
            pafs.copy_files(
                info.path,
                posixpath.join(target_inner, name),
                source_filesystem=source_fs,
                destination_filesystem=target_fs,
            )


#: ``ioctl`` request cloning a whole file's extents (Linux ``FICLONE``: Btrfs, XFS, ...).
_FICLONE = 0x40049409


def _copy_file(source: str, target: str) -> None:
    """Copy local file ``source`` to a new local file ``target`` (which must not exist).

    In order of preference: a reflink (``FICLONE``), the kernel's ``copy_file_range``, a
    byte copy. None of them links: ``target`` is a new inode whatever happens to ``source``.
    """
    with open(source, "rb") as reader, open(target, "xb") as writer:
        try:
            import fcntl

            fcntl.ioctl(writer.fileno(), _FICLONE, reader.fileno())
            return
        except (ImportError, OSError):  # no reflinks here: copy the bytes
            pass
        if hasattr(os, "copy_file_range"):
            try:
                while os.copy_file_range(reader.fileno(), writer.fileno(), 1 << 30):
                    pass
                return
            except OSError:  # not across these filesystems: start again, in user space
                reader.seek(0)
                writer.seek(0)
                writer.truncate()
        shutil.copyfileobj(reader, writer, 1 << 20)


def open_output(path: str):
    """A binary stream writing ``path`` (its directory must exist on a local filesystem)."""
    filesystem, inner = resolve(path)
    return filesystem.open_output_stream(inner)


def open_input(path: str):
    """A seekable binary stream reading ``path``."""
    filesystem, inner = resolve(path)
    return filesystem.open_input_file(inner)


def open_binary(path: str):
    """A buffered binary stream reading ``path``, iterable line by line."""
    if not is_uri(path):
        return open(path, "rb")  # noqa: SIM115 (the caller closes it)
    filesystem, inner = resolve(path)
    return stdio.BufferedReader(filesystem.open_input_stream(inner), buffer_size=1 << 20)


def file_info(path: str | os.PathLike) -> pafs.FileInfo:
    """Type and size of ``path`` (``type`` is ``FileType.NotFound`` when it does not exist)."""
    filesystem, inner = resolve(path)
    return filesystem.get_file_info(inner)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, atomically."""
    with atomic_path(path) as tmp, open_output(tmp) as handle:
        handle.write(data)


def read_text(path: str) -> str:
    with open_input(path) as handle:
        return handle.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
    """Write ``text`` as UTF-8, atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str) -> dict:
    return json.loads(read_text(path))


def content_fingerprint(path: str, known: dict | None = None) -> dict:
    """What identifies the content of a file or directory: its files' names, sizes, mtimes
    and a SHA-256 over their names and bytes.

    ``known`` is an earlier result for ``path``: when every file's name, size and mtime are
    unchanged, its hash is reused instead of reading the bytes again (an edit that keeps size
    and mtime is not seen; any other edit is).

    Example:
        >>> import hashlib, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "qrels.tsv")
        >>> _ = open(path, "w").write("1 0 7 1")
        >>> first = content_fingerprint(path)
        >>> first["sha256"] == content_fingerprint(path, known=first)["sha256"]
        True
        >>> _ = open(path, "w").write("1 0 8 1")
        >>> content_fingerprint(path, known=first)["sha256"] == first["sha256"]
        False
    """
    import hashlib

    filesystem, inner = resolve(path)
    info = filesystem.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(inner, recursive=True)
        infos = sorted(
            (i for i in filesystem.get_file_info(selector) if i.type == pafs.FileType.File),
            key=lambda i: i.path,
        )
        infos = [
            i
            for i in infos
            if not any(
                p.startswith((".", "_")) for p in posixpath.relpath(i.path, inner).split("/")
            )
        ]
    elif info.type == pafs.FileType.File:
        infos = [info]
    else:
        raise FileNotFoundError(path)
    files = [
        [posixpath.relpath(i.path, inner) if i.path != inner else "", i.size, i.mtime_ns]
        for i in infos
    ]
    if known and known.get("files") == files:
        return known
    digest = hashlib.sha256()
    for (name, _, _), file_info in zip(files, infos):
        digest.update(name.encode() + b"\0")
        with filesystem.open_input_stream(file_info.path) as stream:
            while chunk := stream.read(1 << 22):
                digest.update(chunk)
    return {"files": files, "sha256": "sha256:" + digest.hexdigest()}


#: Marks a folder as written by ``export`` or ``compare``, and for whom.
OUTPUT_MARKER = ".rerank-ray-output.json"


def claim_output_folder(folder: str, owner: str, names: list[str]) -> None:
    """Make ``folder`` ready to receive ``names`` for ``owner`` (e.g. an export of one run),
    or refuse in one line: a run directory is never written into, and a file of these names
    is replaced only where the folder's marker says the same owner wrote it.

    Example::

        claim_output_folder("exports", "export of /runs/a", ["retrieval.trec"])
    """
    from rerank_ray.errors import ConfigError

    if exists(join(folder, "manifest.json")):
        raise ConfigError(f"--out {folder}: a run directory; give the output a folder of its own")
    marker = join(folder, OUTPUT_MARKER)
    try:
        recorded = read_json(marker) if exists(marker) else None
    except (OSError, ValueError):
        recorded = None
    if recorded != {"owner": owner}:
        for name in names:
            if exists(join(folder, name)):
                raise ConfigError(
                    f"--out {folder}: {name} exists and was not written there by {owner};"
                    " remove it or choose another folder"
                )
    makedirs(folder)
    write_json(marker, {"owner": owner})
