"""Every file this tool writes, and the folders it owns: written atomically, never through a link,
readable by the team, and never anything of the user's deleted.

One write primitive (:func:`atomic_path`, and :func:`write_atomic` for bytes in memory): a fresh
file with an unpredictable name is created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) in the
final folder, written, flushed to disk and renamed over the final name, so a link planted at that
name is replaced, never followed; every folder between the write's root and the file must be a
real folder (a planted link to a folder is refused). ``tests/test_security.py`` walks the code for
writes that bypass it.

Every folder this tool writes (a checkpoint, a ``.partial`` progress folder) carries a
marker, ``.obsdiff-hub.json``, listing the files the tool wrote there and the folder's own
device and inode. A folder counts as this tool's only while the marker's inode matches the
folder and every file in it is listed: a marker copied into another folder (say, inside a
downloaded repo) proves nothing, and a file the user added makes the folder theirs again.
Only such a folder (or an empty one) is ever replaced or removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InputError

MARKER = ".obsdiff-hub.json"


class OutputError(InputError):
    """An output location that cannot be used; the message says why and what to do."""


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask_modes(root: Path) -> None:
    """Folders ``0o777 & ~umask``, files ``0o666 & ~umask`` under ``root`` (``mkdtemp`` makes 0700
    and safetensors writes 0600; a zoo on a shared disk must be readable by the team)."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def _relative_files(folder: Path) -> list[str]:
    """Every entry below ``folder`` that is not a directory (files, links), as relative posix paths."""
    out = []
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            out.append(Path(root, name).relative_to(folder).as_posix())
    return sorted(out)


def real_folders(folder: Path, root: Path, *, create: bool = True) -> None:
    """Make ``folder`` exist as real folders from ``root`` down: a missing one is created (unless
    ``create`` is off: only checked), a link or a file in the place of one is refused (a planted
    link must not redirect a write). ``root`` itself is taken as given: it is where the user or
    this tool chose to write."""
    folder, root = Path(folder), Path(root)
    try:
        relative = folder.relative_to(root)
    except ValueError:
        raise OutputError(f"{folder} is not inside {root}; refusing to write there") from None
    current = root
    for part in relative.parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            if not create:
                return
            os.mkdir(current)
            continue
        if not stat.S_ISDIR(mode):
            raise OutputError(f"{current} is a link or a file where a folder belongs; refusing to write through it")


@contextmanager
def atomic_path(path: Path, root: Path | None = None) -> Iterator[Path]:
    """A fresh file to write ``path`` through, for writers that take a path (safetensors, PIL):
    created empty, exclusively and never through a link, with an unpredictable name beside
    ``path``; when the block succeeds it is flushed to disk, given the umask's mode and renamed
    over ``path`` (a link there is replaced, not followed). Folders from ``root`` (default:
    ``path``'s own folder) down to ``path`` must be real folders; missing ones are created."""
    path = Path(path)
    real_folders(path.parent, root if root is not None else path.parent)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
            os.fchmod(fd, 0o666 & ~current_umask())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, data: bytes | str, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, root) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def probe_writable(folder: Path) -> None:
    """Fail now, not after the work, unless something can be created where ``folder`` is (or would
    be): a real probe (a temporary folder made and removed in the nearest existing ancestor), since
    permissions alone do not tell (``/proc`` looks writable to root)."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".obsdiff-probe-", dir=ancestor))
    except OSError as error:
        raise OutputError(
            f"nothing can be written in {ancestor} ({error.strerror}), so {folder} cannot be created; choose "
            "another `out`"
        ) from None


def check_writable_file(path: Path) -> None:
    """Fail before any work unless ``path`` can be written: its folder exists and is writable, and
    ``path`` is not itself a folder."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(
            f"{parent} is not an existing folder, so {path} cannot be written; create it or choose another `out`"
        )
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{path} is a folder; give a file name as the `out`")
    probe_writable(parent)


def mark_owned(folder: Path, files: list[str] | None = None, kind: str = "checkpoint") -> None:
    """Write the marker: ``files`` (default: everything in ``folder`` now) are this tool's, an
    entry ending in ``/`` with everything below it; ``kind`` is ``checkpoint`` (an output
    folder) or ``partial`` (saved progress)."""
    stat = folder.stat()
    listed = sorted(set(files if files is not None else _relative_files(folder)) - {MARKER})
    record = {"tool": "obsdiff-hub", "kind": kind, "device": stat.st_dev, "inode": stat.st_ino, "files": listed}
    write_atomic(folder / MARKER, json.dumps(record, indent=1) + "\n")


def owned_files(folder: Path) -> set[str]:
    """The files the genuine marker of ``folder`` lists (empty when there is none)."""
    record = read_marker(folder)
    return set(record["files"]) if record else set()


def add_owned(folder: Path, names: list[str]) -> None:
    """Record files this tool just wrote into one of its own folders (a card, an evaluation)."""
    record = read_marker(folder)
    if record is not None:
        mark_owned(folder, sorted(set(record["files"]) | set(names)), record.get("kind", "checkpoint"))


def read_marker(folder: Path) -> dict | None:
    """The marker of ``folder`` if it is genuine (valid JSON naming this folder's inode), else None."""
    path = folder / MARKER
    if folder.is_symlink() or not folder.is_dir() or path.is_symlink() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    stat = folder.stat()
    if (
        not isinstance(record, dict)
        or record.get("tool") != "obsdiff-hub"
        or not isinstance(record.get("files"), list)
    ):
        return None
    if record.get("device") != stat.st_dev or record.get("inode") != stat.st_ino:
        return None
    return record


def first_foreign_file(folder: Path) -> str | None:
    """The first entry in ``folder`` this tool did not write (None: empty, or all its own). A
    sub-folder is this tool's only if it holds something the marker lists: a folder of empty
    folders is someone's, not an empty output."""
    if folder.is_symlink():
        return "(the folder itself is a symbolic link)"
    entries = [e for e in _relative_files(folder) if e != MARKER]
    subfolders = sorted(
        Path(root, name).relative_to(folder).as_posix()
        for root, dirs, _ in os.walk(folder)
        for name in dirs
        if not os.path.islink(os.path.join(root, name))
    )
    if not entries and not subfolders:
        return None
    record = read_marker(folder)
    owned = set(record["files"]) if record else set()
    folders = tuple(o for o in owned if o.endswith("/"))  # a listed folder owns everything below it
    for entry in entries:
        if (entry not in owned and not entry.startswith(folders)) or (folder / entry).is_symlink():
            return entry
    for sub in subfolders:
        if not any(o.startswith(sub + "/") for o in owned):
            return sub + "/"
    return None


def remove_owned(folder: Path) -> None:
    """Delete ``folder`` only if it is empty or entirely this tool's; raise otherwise."""
    foreign = first_foreign_file(folder)
    if foreign is not None:
        raise OutputError(f"{folder} holds {foreign}, which obsdiff-hub did not write; it was left untouched")
    shutil.rmtree(folder)


def check_writable_target(target: Path, overwrite: bool) -> None:
    """Fail before any work if ``target`` cannot become this tool's output folder."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise OutputError(f"{target} exists and is not a folder; choose another output directory")
    if target.exists():
        if not overwrite:
            raise OutputError(
                f"output directory {target} already exists; pass `overwrite` to replace it or choose another `out`"
            )
        foreign = first_foreign_file(target)
        if foreign is not None:
            raise OutputError(
                f"{target} holds {foreign}, which obsdiff-hub did not write; `overwrite` only replaces an empty "
                "folder "
                "or an earlier obsdiff-hub output. Move your files or choose another `out`"
            )
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(
            f"{ancestor} is not a folder, so {target} cannot be created; choose another output directory"
        )
    probe_writable(target.parent)


@contextmanager
def atomic_output(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; when the block succeeds it becomes ``target`` in one rename.

    Every file in it is then listed in the marker and given umask modes. An earlier output at
    ``target`` (only ever an empty folder or this tool's own, see :func:`check_writable_target`)
    is moved aside first and deleted only after the new one is in place; if the block fails,
    ``target`` is untouched and the temp folder removed.
    """
    target = Path(target)
    check_writable_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        mark_owned(tmp, kind="checkpoint")
        apply_umask_modes(tmp)
        if target.exists():
            check_writable_target(target, overwrite)  # unchanged while we worked?
            aside = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
            target.rename(aside)
            tmp.rename(target)
            shutil.rmtree(aside)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
