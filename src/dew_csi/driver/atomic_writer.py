"""Atomic updates of a set of files in a volume directory, in the Kubernetes AtomicWriter layout.

Layout of a target directory after a write (the same as Kubernetes secret and configMap volumes,
and as the upstream Secrets Store CSI driver writes, so consumers that watch `..data` work):

    target/
      ..2024_03_21_13_49_29.a1b2c3d4/    one "generation": every file of one payload (mode 0755)
        password                        files carry the payload's mode, whatever the umask
        db/user                         nested paths are plain sub-directories (mode 0755)
      ..data -> ..2024_03_21_13_49_29.a1b2c3d4
      password -> ..data/password       one symlink per first path component
      db -> ..data/db

A new generation is written and fsynced in full before `..data_tmp -> <generation>` is renamed
over `..data` (rename(2) is atomic), so a reader that resolves `..data` once sees either the old
set or the new set, never a mix, and a crash leaves one of the two. Names starting with `..`
are reserved for the writer; payload paths may not start with `..`.

Deliberate differences from Kubernetes' writer (all in the direction of correctness):
- a change of mode alone is written (Kubernetes compares contents only);
- a `..data_tmp` left by a crash is removed instead of failing every later write;
- generations left by a crash before the swap are removed after the next successful swap;
- a non-symlink entry at a top-level name of the payload (files written by an old provider, the
  upstream driver's `cleanupProviderFiles`) is replaced by the symlink instead of being skipped;
- missing or wrong top-level symlinks are repaired even when no new generation is needed (as the
  current Kubernetes variant does, kubernetes#121472).

The writer makes no concurrency guarantee: callers serialise writes to one target directory.
Everything here is synchronous filesystem work; async callers run it through `run_off_loop`
(a worker thread that a cancelled caller still waits for).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from dew_csi.logs import fields

log = logging.getLogger(__name__)

DATA_DIR_NAME: Final = "..data"
DATA_TMP_NAME: Final = "..data_tmp"
# Linux PATH_MAX and NAME_MAX, counted in bytes as the upstream Go code (len of a string) does.
MAX_PATH_LENGTH: Final = 4096
MAX_FILE_NAME_LENGTH: Final = 255
MAX_FILE_MODE: Final = 0o777

_GENERATION_PREFIX_FORMAT: Final = "..%Y_%m_%d_%H_%M_%S."
_GENERATION_NAME: Final = re.compile(r"\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.[A-Za-z0-9_]+")
_DIR_MODE: Final = 0o755
_QUOTED_PATH_MAX: Final = 80

T = TypeVar("T")


@dataclass(frozen=True)
class FileProjection:
    """One file of a payload: a relative path, a permission mode (0..0o777) and the bytes."""

    path: str
    mode: int
    contents: bytes = field(repr=False)


Payload = Mapping[str, FileProjection] | Sequence[FileProjection]


class PayloadError(ValueError):
    """The payload breaks a path, mode or uniqueness rule; nothing was written."""


class WriteError(Exception):
    """Writing to the target directory failed; the previous generation is still in place."""


def _quote(path: str) -> str:
    if len(path) > _QUOTED_PATH_MAX:
        return repr(path[:_QUOTED_PATH_MAX] + "...")
    return repr(path)


def validate_path(path: str) -> None:
    """Raise `PayloadError` unless `path` is a clean relative path the writer may own."""
    if not isinstance(path, str):
        raise PayloadError(f"file path must be a string, not {type(path).__name__}")
    if not path:
        raise PayloadError("file path must not be empty")
    if "\0" in path:
        raise PayloadError(f"file path {_quote(path)} must not contain a NUL character")
    try:
        encoded_length = len(path.encode())
    except UnicodeEncodeError:
        raise PayloadError(f"file path {_quote(path)} is not valid UTF-8") from None
    if encoded_length > MAX_PATH_LENGTH:
        raise PayloadError(
            f"file path {_quote(path)} is {encoded_length} bytes long, "
            f"more than the maximum of {MAX_PATH_LENGTH}"
        )
    if path.startswith("/"):
        raise PayloadError(f"file path {_quote(path)} must be relative, not absolute")
    components = path.split("/")
    if ".." in components:
        raise PayloadError(f"file path {_quote(path)} must not contain a '..' component")
    if path.startswith(".."):
        raise PayloadError(
            f"file path {_quote(path)} must not start with '..' (names starting with '..' "
            "are reserved for the writer)"
        )
    for component in components:
        if len(component.encode()) > MAX_FILE_NAME_LENGTH:
            raise PayloadError(
                f"file path {_quote(path)} has a component longer than {MAX_FILE_NAME_LENGTH} bytes"
            )
    # normpath catches empty components ("a//b", "a/"), "." components and a leading "./";
    # "." alone survives normpath but names the target directory itself.
    if path == "." or os.path.normpath(path) != path:
        clean = os.path.normpath(path)
        raise PayloadError(f"file path {_quote(path)} is not in clean form (it would be {clean!r})")


def _validate_projection(projection: object) -> FileProjection:
    if not isinstance(projection, FileProjection):
        raise PayloadError(f"payload items must be FileProjection, not {type(projection).__name__}")
    validate_path(projection.path)
    mode = projection.mode
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= MAX_FILE_MODE:
        raise PayloadError(
            f"file {_quote(projection.path)} has mode {mode!r}; a mode is 0..0o777 (0..511)"
        )
    if not isinstance(projection.contents, bytes):
        raise PayloadError(
            f"file {_quote(projection.path)} contents must be bytes, "
            f"not {type(projection.contents).__name__}"
        )
    return projection


def _ancestors(path: str) -> list[str]:
    """ "a/b/c" -> ["a", "a/b"]."""
    components = path.split("/")
    return ["/".join(components[:depth]) for depth in range(1, len(components))]


def _normalise_payload(payload: Payload) -> dict[str, FileProjection]:
    projections: list[FileProjection] = []
    if isinstance(payload, Mapping):
        for key, value in payload.items():
            projection = _validate_projection(value)
            if key != projection.path:
                raise PayloadError(
                    f"payload key {_quote(key)} differs from its file path "
                    f"{_quote(projection.path)}"
                )
            projections.append(projection)
    else:
        projections = [_validate_projection(item) for item in payload]

    files: dict[str, FileProjection] = {}
    for projection in projections:
        if projection.path in files:
            raise PayloadError(f"file path {_quote(projection.path)} appears more than once")
        files[projection.path] = projection
    # "a" as a file and "a/b" would need "a" to be a file and a directory at once.
    for path in files:
        for ancestor in _ancestors(path):
            if ancestor in files:
                raise PayloadError(
                    f"file path {_quote(ancestor)} is also the directory of {_quote(path)}"
                )
    return files


def validate_payload(files: Payload) -> None:
    """Raise `PayloadError` (naming the path and the rule, never the contents) for a bad payload.

    Rules, as the upstream driver's: each path is non-empty, relative, at most 4096 bytes with
    components of at most 255 bytes, has no `..` component, does not start with `..`, is in clean
    form (`os.path.normpath(p) == p`) and has no NUL. Also: paths are unique, no path is the
    directory of another, modes are 0..0o777 and contents are bytes.
    """
    _normalise_payload(files)


def _top_level_name(path: str) -> str:
    return path.split("/", 1)[0]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_entry(path: str) -> None:
    """Remove a file, symlink or directory tree without following symlinks; missing is fine."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _read_regular_file(path: str) -> tuple[bytes, int] | None:
    """(contents, mode) of a regular file, or None when it is missing or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink where a file should be
            return None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, max(status.st_size, 1 << 16)):
            chunks.append(chunk)
        return b"".join(chunks), stat.S_IMODE(status.st_mode)
    finally:
        os.close(fd)


def _list_generation(root: str) -> tuple[set[str], set[str]]:
    """Relative (file paths, directory paths) inside a generation; empty when it is missing."""
    file_paths: set[str] = set()
    dir_paths: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        relative_dir = os.path.relpath(dirpath, root)
        prefix = "" if relative_dir == "." else relative_dir + "/"
        dir_paths.update(prefix + name for name in dirnames)
        file_paths.update(prefix + name for name in filenames)
    return file_paths, dir_paths


def _read_generation(root: str) -> dict[str, FileProjection]:
    """Every regular file of a generation; raises FileNotFoundError when it vanishes mid-read."""
    result: dict[str, FileProjection] = {}
    pending = [""]
    while pending:
        relative_dir = pending.pop()
        with os.scandir(os.path.join(root, relative_dir)) as entries:
            for entry in entries:
                relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append(relative)
                elif entry.is_file(follow_symlinks=False):
                    read = _read_regular_file(entry.path)
                    if read is None:
                        raise FileNotFoundError(errno.ENOENT, "file vanished", entry.path)
                    contents, mode = read
                    result[relative] = FileProjection(relative, mode, contents)
    return result


def _current_generation(target: str) -> str | None:
    """The generation name `..data` points to, None when there is none yet."""
    data_link = os.path.join(target, DATA_DIR_NAME)
    try:
        name = os.readlink(data_link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise WriteError(
                f"{data_link} exists but is not a symlink; refusing to replace it"
            ) from exc
        raise
    # Only a generation name inside target is ours to compare against and later delete.
    if not _GENERATION_NAME.fullmatch(name):
        raise WriteError(f"{data_link} points to {name!r}, which is not a generation directory")
    return name


def read_current(target_dir: str | os.PathLike[str]) -> dict[str, FileProjection]:
    """The files of the generation `..data` points to now, keyed by relative path.

    `..data` is resolved once per attempt and checked again after reading, so the result is one
    consistent generation even while a writer swaps. Empty when nothing was written yet.
    """
    target = os.fspath(target_dir)
    for _ in range(10):
        name = _current_generation(target)
        if name is None:
            return {}
        try:
            files = _read_generation(os.path.join(target, name))
        except FileNotFoundError:
            if _current_generation(target) == name:
                return {}  # `..data` dangles: nothing is readable
            continue
        if _current_generation(target) == name:
            return files
    raise WriteError(f"{target}: '..data' kept changing while reading it")


def remove_all(target_dir: str | os.PathLike[str], *, keep: Collection[str] = ()) -> None:
    """Remove every entry inside `target_dir` (dot entries too) but not the directory itself.

    Names in `keep` stay. Symlinks are removed, never followed. A missing directory is fine.
    Every entry is tried; if some could not be removed, `WriteError` names how many and the
    first cause.
    """
    target = os.fspath(target_dir)
    try:
        names = [name for name in os.listdir(target) if name not in keep]
    except FileNotFoundError:
        return
    except OSError as exc:
        raise WriteError(f"cannot list {target}: {exc}") from exc
    # User-visible names first, then `..data`, so readers lose the files before the data.
    names.sort(key=lambda name: (name.startswith(".."), name != DATA_DIR_NAME, name))
    failures: list[OSError] = []
    for name in names:
        try:
            _remove_entry(os.path.join(target, name))
        except OSError as exc:
            failures.append(exc)
    if failures:
        raise WriteError(
            f"cannot remove {len(failures)} of {len(names)} entries in {target}: {failures[0]}"
        ) from failures[0]


class AtomicWriter:
    """Writes payloads into one target directory; see the module docstring for the layout."""

    def __init__(self, target_dir: str | os.PathLike[str]) -> None:
        self._target = os.fspath(target_dir)

    @property
    def target_dir(self) -> str:
        return self._target

    def write(self, payload: Payload) -> bool:
        """Make the target hold exactly `payload`; True when anything visible changed.

        Raises `PayloadError` before touching the disk, and `WriteError` (naming the target and
        the cause) when the filesystem fails; after a failure the previous generation is intact.
        """
        files = _normalise_payload(payload)
        try:
            return self._write(files)
        except WriteError:
            raise
        except OSError as exc:
            raise WriteError(f"cannot write {len(files)} files to {self._target}: {exc}") from exc

    def _write(self, files: dict[str, FileProjection]) -> bool:
        if not os.path.isdir(self._target):
            raise WriteError(f"target directory {self._target} does not exist")
        # A crash between creating `..data_tmp` and the rename leaves it behind; Kubernetes'
        # writer then fails with EEXIST forever. It never holds data anyone reads.
        _remove_entry(os.path.join(self._target, DATA_TMP_NAME))

        old_generation = _current_generation(self._target)
        needs_new_generation = self._differs(files, old_generation)
        new_generation = None
        if needs_new_generation:
            new_generation = self._write_generation(files)
            self._swap_data_link(new_generation)

        top_level_names = {_top_level_name(path) for path in files}
        links_changed = self._ensure_user_visible_links(top_level_names)
        links_removed = self._remove_stale_user_visible_links(top_level_names)
        if links_changed or links_removed:
            _fsync_dir(self._target)
        if new_generation is not None:
            self._remove_other_generations(keep=new_generation)
            log.debug(
                "Wrote new generation",
                extra=fields(target=self._target, generation=new_generation, files=len(files)),
            )
        elif old_generation is not None:
            # A crash after an earlier swap can leave the generation before it behind.
            self._remove_other_generations(keep=old_generation)
        return needs_new_generation or links_changed or links_removed

    def _differs(self, files: dict[str, FileProjection], generation: str | None) -> bool:
        """True when `generation` does not hold exactly `files` (paths, bytes and modes)."""
        if generation is None:
            return True
        root = os.path.join(self._target, generation)
        if not os.path.isdir(root):
            return True  # `..data` dangles: write a generation it can point to
        old_files, old_dirs = _list_generation(root)
        wanted_dirs = {ancestor for path in files for ancestor in _ancestors(path)}
        if old_files != set(files) or old_dirs != wanted_dirs:
            return True
        for projection in files.values():
            current = _read_regular_file(os.path.join(root, projection.path))
            # Modes are compared too, unlike Kubernetes' writer: there a provider's new
            # filePermission would never reach the volume. A mode-only change gets a whole new
            # generation rather than a chmod in place, so it arrives like any other update (one
            # `..data` swap that watchers see) and a generation is never modified once visible.
            if current != (projection.contents, projection.mode):
                return True
        return False

    def _write_generation(self, files: dict[str, FileProjection]) -> str:
        prefix = time.strftime(_GENERATION_PREFIX_FORMAT, time.gmtime())
        root = tempfile.mkdtemp(prefix=prefix, dir=self._target)
        try:
            os.chmod(root, _DIR_MODE)  # mkdtemp creates 0700
            directories = [root]
            for path in sorted(files):
                for ancestor in _ancestors(path):
                    directory = os.path.join(root, ancestor)
                    if not os.path.isdir(directory):
                        os.mkdir(directory)
                        os.chmod(directory, _DIR_MODE)  # umask-proof, like the files
                        directories.append(directory)
                self._write_file(os.path.join(root, path), files[path])
            # Deepest first, so every entry is durable before the directory that names it.
            for directory in reversed(directories):
                _fsync_dir(directory)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return os.path.basename(root)

    @staticmethod
    def _write_file(path: str, projection: FileProjection) -> None:
        # Created 0600 and chmod'ed after writing: the umask never narrows the final mode, and
        # a read-only mode (0400) does not stop us writing the contents first.
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            remaining = memoryview(projection.contents)
            while remaining:
                written = os.write(fd, remaining)
                remaining = remaining[written:]
            os.fchmod(fd, projection.mode)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _swap_data_link(self, generation: str) -> None:
        tmp_link = os.path.join(self._target, DATA_TMP_NAME)
        try:
            os.symlink(generation, tmp_link)
            os.replace(tmp_link, os.path.join(self._target, DATA_DIR_NAME))
            _fsync_dir(self._target)
        except BaseException:
            # `..data` still names the old generation: drop everything this write created.
            try:
                _remove_entry(tmp_link)
            finally:
                shutil.rmtree(os.path.join(self._target, generation), ignore_errors=True)
            raise

    def _ensure_user_visible_links(self, names: set[str]) -> bool:
        changed = False
        for name in sorted(names):
            link = os.path.join(self._target, name)
            wanted = f"{DATA_DIR_NAME}/{name}"
            try:
                current: str | None = os.readlink(link)
            except FileNotFoundError:
                current = None
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Not a symlink: a file or directory an old provider wrote itself.
                _remove_entry(link)
                current = None
            if current == wanted:
                continue
            if current is not None:
                os.unlink(link)
            os.symlink(wanted, link)
            changed = True
        return changed

    def _remove_stale_user_visible_links(self, names: set[str]) -> bool:
        """Remove our `name -> ..data/name` links whose name left the payload."""
        removed = False
        for name in os.listdir(self._target):
            if name.startswith("..") or name in names:
                continue
            link = os.path.join(self._target, name)
            try:
                points_to = os.readlink(link)
            except OSError:
                continue  # not a symlink: not ours, leave it
            if points_to == f"{DATA_DIR_NAME}/{name}":
                os.unlink(link)
                removed = True
        return removed

    def _remove_other_generations(self, *, keep: str) -> None:
        # The new generation is live; failing to free old ones must not fail the write.
        for name in os.listdir(self._target):
            if name == keep or not _GENERATION_NAME.fullmatch(name):
                continue
            try:
                shutil.rmtree(os.path.join(self._target, name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning(
                    "Cannot remove an old generation",
                    extra=fields(target=self._target, generation=name, error=str(exc)),
                )


async def run_off_loop(work: Callable[[], T]) -> T:
    """Run `work` (a write with its fsyncs) in a worker thread, so the event loop keeps serving.

    A write cannot be called off halfway. When the caller is cancelled this still waits for the
    thread to finish before it re-raises the cancellation, so what the caller does next (a failed
    first mount unmounts its tmpfs) never races a write that is still going on: were the tmpfs
    unmounted under it, the rest of the write would land on the disk below.
    """
    future = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue  # cancelled again: still wait for the thread
            except Exception:  # the write's own error; the caller is cancelled all the same
                break
        if not future.cancelled():
            future.exception()  # retrieved: no "exception was never retrieved" warning
        raise
