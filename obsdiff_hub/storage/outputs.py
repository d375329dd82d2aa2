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
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from . import jsonio

MARKER = ".obsdiff-hub.json"
MAX_MARKER_BYTES = 16 * 1024**2  # a marker lists the files of one checkpoint


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


DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
PINNED = "/proc/self/fd/"


def is_pinned(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (below) a :attr:`HeldFolder.pinned` path of this process."""
    return str(path).startswith(PINNED)


class HeldFolder:
    """A folder opened once and written only through its descriptor.

    Every create, write, rename and delete below it is relative to the descriptor (``dir_fd``, with
    ``O_NOFOLLOW`` at every step), so renaming the folder, or putting a link under its name, while
    this tool works cannot move a write elsewhere; :meth:`verify` refuses, in one line, once the
    name no longer leads to the folder that was opened. Writers that take a path (safetensors, PIL,
    ``save_pretrained``) get :attr:`pinned`, a path through the descriptor itself on Linux
    (``/proc/self/fd/N``).
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = Path(path)
        self.fd = fd
        info = os.fstat(fd)
        self.identity = (info.st_dev, info.st_ino)

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False, follow_link: bool = True) -> HeldFolder:
        """``path`` opened as a folder (created with its parents if ``create``). The path itself is taken as
        given (where the user or this tool chose to write, a link included) unless ``follow_link`` is off;
        below it, :meth:`folder` and every write refuse links."""
        path = Path(path)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
        follow = follow_link or is_pinned(path)  # a pinned path is a link by design: to the folder held
        try:
            return cls(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY if follow else DIRECTORY_FLAGS))
        except OSError as error:
            raise OutputError(f"{path} is not a folder this tool can write into ({error.strerror})") from None

    def __enter__(self) -> HeldFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()

    @property
    def pinned(self) -> Path:
        """A path that leads to this very folder whatever happens to its name (Linux), else its name."""
        proc = Path(f"/proc/self/fd/{self.fd}")
        return proc if proc.is_dir() else self.path

    def verify(self) -> None:
        """Refuse once the folder's name leads anywhere but the folder that was opened."""
        try:
            info = os.stat(self.path)  # the folder its name leads to now
            same = stat.S_ISDIR(info.st_mode) and (info.st_dev, info.st_ino) == self.identity
        except OSError:
            same = False
        if not same:
            raise OutputError(
                f"{self.path} was replaced (renamed, removed or made a link) while obsdiff-hub wrote into it; "
                "nothing more was written there"
            )

    def exists(self, name: str) -> bool:
        try:
            os.lstat(name, dir_fd=self.fd)
            return True
        except FileNotFoundError:
            return False

    def folder(self, relative: str | os.PathLike, *, create: bool = True) -> HeldFolder:
        """A sub-folder, every step a real folder (created when missing and ``create``); a link is refused."""
        fd = os.dup(self.fd)
        current = self.path
        try:
            for part in Path(relative).parts:
                current = current / part
                if create:
                    try:
                        os.mkdir(part, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    child = os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
                except OSError:
                    raise OutputError(
                        f"{current} is a link or a file where a folder belongs; refusing to write through it"
                    ) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return HeldFolder(current, fd)

    def make_temp_folder(self, prefix: str, *, mark: bool = True) -> HeldFolder:
        """A fresh folder with an unpredictable name, marked at once as this tool's unfinished work (so a
        crash leaves a leftover the next run recognises as its own; ``mark`` off: the caller's marker
        lists it)."""
        while True:
            name = f"{prefix}{secrets.token_hex(4)}.tmp"
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
                break
            except FileExistsError:
                continue
        folder = self.folder(name, create=False)
        if mark:
            folder.mark([], kind="temp")
        return folder

    @contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A fresh file to write ``name`` through (for writers that take a path): created exclusively and never
        through a link, flushed to disk, given the umask's mode and renamed over ``name`` (a link there is
        replaced, not followed)."""
        while True:
            tmp = f".{name}.{secrets.token_hex(8)}.tmp"
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=self.fd))
                break
            except FileExistsError:
                continue
        try:
            yield self.pinned / tmp
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.fd)
            try:
                os.fsync(fd)
                os.fchmod(fd, 0o666 & ~current_umask())
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=self.fd)
            except FileNotFoundError:
                pass
            raise

    def write(self, name: str, data: bytes | str) -> None:
        """Write ``data`` to ``name`` in this folder through :meth:`writing`."""
        with self.writing(name) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)

    def rename(self, source: str, target: str) -> None:
        os.rename(source, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def move_in(self, source: HeldFolder, relative: str) -> None:
        """Move ``relative`` from ``source`` to the same place here, by rename through both descriptors (the
        folders on the way are real folders, created when missing; a link at the name is replaced)."""
        parent, name = Path(relative).parent, Path(relative).name
        with source.folder(parent, create=False) as origin, self.folder(parent) as destination:
            os.replace(name, name, src_dir_fd=origin.fd, dst_dir_fd=destination.fd)

    def remove_tree(self, name: str) -> None:
        """Delete a sub-folder and everything in it, through the descriptor (links inside are removed, not
        followed)."""
        shutil.rmtree(name, dir_fd=self.fd)

    def mark(self, files: list[str] | None = None, kind: str = "checkpoint") -> None:
        """:func:`mark_owned` for this folder, written through the descriptor."""
        info = os.fstat(self.fd)
        listed = sorted(set(files if files is not None else _relative_files(self.pinned)) - {MARKER})
        record = {"tool": "obsdiff-hub", "kind": kind, "device": info.st_dev, "inode": info.st_ino, "files": listed}
        if kind == "temp":
            record.update(pid=os.getpid(), host=socket.gethostname(), pid_namespace=pid_namespace())
        self.write(MARKER, json.dumps(record, indent=1) + "\n")


@contextmanager
def atomic_path(path: Path, root: Path | None = None) -> Iterator[Path]:
    """A fresh file to write ``path`` through (see :meth:`HeldFolder.writing`). Folders from ``root``
    (default: ``path``'s own folder) down to ``path`` must be real folders; missing ones are created."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    try:
        relative = path.parent.relative_to(base)
    except ValueError:
        raise OutputError(f"{path} is not inside {base}; refusing to write there") from None
    with HeldFolder.open(base) as held, held.folder(relative) as folder, folder.writing(path.name) as tmp:
        yield tmp


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
    check_name_lengths(path, FILE_SUFFIX_BYTES)
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
    with HeldFolder.open(folder) as held:
        held.mark(files, kind)


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
    linked = folder.is_symlink() and not is_pinned(folder)  # a pinned path is this process's own held folder
    if linked or not folder.is_dir() or path.is_symlink() or not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_MARKER_BYTES:
            return None
        record = jsonio.loads(path.read_text())
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
    if folder.is_symlink() and not is_pinned(folder):
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
        if not (sub + "/").startswith(folders) and not any(o.startswith(sub + "/") for o in owned):
            return sub + "/"
    return None


def remove_owned(folder: Path) -> None:
    """Delete ``folder`` only if it is empty or entirely this tool's; raise otherwise."""
    foreign = first_foreign_file(folder)
    if foreign is not None:
        raise OutputError(f"{folder} holds {foreign}, which obsdiff-hub did not write; it was left untouched")
    shutil.rmtree(folder)


NAME_MAX = 255  # bytes in one path component, on every file system this runs on
# What this tool adds to a name it writes beside: ".NAME.<8 hex>.tmp", ".NAME.old-<8 hex>", "NAME.partial";
# ".NAME.<16 hex>.tmp" for a file.
FOLDER_SUFFIX_BYTES = 14
FILE_SUFFIX_BYTES = 22


def check_name_lengths(path: Path, suffix_bytes: int) -> None:
    """Every component of ``path`` fits a file system's name limit, the last one with room for the temporary
    names this tool makes from it: checked before any work, not discovered when the result is written."""
    parts = path.parts
    for index, part in enumerate(parts):
        room = NAME_MAX - (suffix_bytes if index == len(parts) - 1 else 0)
        if len(part.encode()) > room:
            raise OutputError(
                f"{part[:40]}… is {len(part.encode())} bytes long; a name in {path.parent} can have at most {room} "
                "(the file system's 255, less what this tool adds for its temporary names); choose a shorter one"
            )


def check_writable_target(target: Path, overwrite: bool) -> None:
    """Fail before any work if ``target`` cannot become this tool's output folder."""
    check_name_lengths(target, FOLDER_SUFFIX_BYTES)
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


def pid_namespace() -> int | None:
    """The identity of this process's pid namespace (containers on one host have their own), where Linux says."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


class Destination:
    """Where an output will appear, held from the moment it is checked: the nearest existing ancestor of its
    folder is opened then (links in the path as given are resolved once, now), and the rest of the way is
    created through that descriptor when the output is written, never through a link. Swapping any folder
    on the way for a link while the work runs cannot move the output."""

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        ancestor = self.target.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        self.ancestor = HeldFolder.open(ancestor)
        self.missing = self.target.parent.relative_to(ancestor)

    def parent(self) -> HeldFolder:
        """The output's folder (a new descriptor the caller closes), created through the held ancestor."""
        return self.ancestor.folder(self.missing, create=True)

    def close(self) -> None:
        self.ancestor.close()

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_leftover(path: Path) -> bool:
    """A temp folder this tool made on this host for a process that no longer runs: an interrupted run's
    unfinished output, safe to remove."""
    record = read_marker(path)
    if record is None or record.get("kind") != "temp" or record.get("host") != socket.gethostname():
        return False
    if record.get("pid_namespace") != pid_namespace():  # another container's process ids mean nothing here
        return False
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False  # the process that made it still runs


def remove_leftovers(held: HeldFolder, name: str) -> None:
    """Remove the leftovers of interrupted runs that wrote ``name`` in ``held`` (``.NAME.*.tmp``)."""
    for entry in os.listdir(held.fd):
        if entry.startswith(f".{name}.") and entry.endswith(".tmp") and is_leftover(held.pinned / entry):
            held.remove_tree(entry)


@contextmanager
def atomic_output(
    target: str | os.PathLike, *, overwrite: bool = False, parent: HeldFolder | Destination | None = None
) -> Iterator[Path]:
    """Yield a folder to write ``target`` into; when the block succeeds it becomes ``target`` in one rename.

    The folder is made inside ``target``'s parent (``parent``: held by the caller, or a
    :class:`Destination` held since the output was checked; else opened now), held open for the whole
    write and yielded as a path through its own descriptor: nothing written goes elsewhere if a name on
    the way is swapped for a link, and the final rename refuses if the parent's name no longer leads to
    the folder opened. Every file is then listed in the marker and given umask modes. An earlier output
    at ``target`` (only ever an empty folder or this tool's own, see :func:`check_writable_target`) is
    moved aside first and deleted only after the new one is in place; if the block fails, ``target`` is
    untouched and the temp folder removed. With ``overwrite``, leftovers of interrupted runs of the same
    target are removed first.
    """
    target = Path(target)
    check_writable_target(target, overwrite)
    destination = parent if isinstance(parent, Destination) else Destination(target) if parent is None else None
    held = parent if isinstance(parent, HeldFolder) else destination.parent()  # type: ignore[union-attr]
    name = target.name
    try:
        if overwrite:
            remove_leftovers(held, name)
        with held.make_temp_folder(f".{name}.") as tmp:
            temp_name = tmp.path.name
            try:
                yield tmp.pinned
                tmp.mark(kind="checkpoint")
                apply_umask_modes(tmp.pinned)
                held.verify()
                if held.exists(name):
                    check_writable_target(target, overwrite)  # unchanged while we worked?
                    aside = f".{name}.old-{secrets.token_hex(4)}"
                    held.rename(name, aside)
                    held.rename(temp_name, name)
                    held.remove_tree(aside)
                else:
                    held.rename(temp_name, name)
            finally:
                if held.exists(temp_name):
                    held.remove_tree(temp_name)
    finally:
        if held is not parent:
            held.close()
        if destination is not None and parent is None:
            destination.close()
