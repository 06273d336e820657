"""AtomicWriter: the Kubernetes layout, updates, validation, failures and reader consistency."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dew_csi.driver.atomic_writer import (
    DATA_DIR_NAME,
    DATA_TMP_NAME,
    AtomicWriter,
    FileProjection,
    PayloadError,
    WriteError,
    read_current,
    remove_all,
    validate_path,
    validate_payload,
)

GENERATION_NAME = re.compile(r"\.\.(\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2})\.[A-Za-z0-9_]+")


def projection(path: str, contents: bytes | str, mode: int = 0o644) -> FileProjection:
    data = contents.encode() if isinstance(contents, str) else contents
    return FileProjection(path, mode, data)


def generations(target: Path) -> list[str]:
    return sorted(name for name in os.listdir(target) if GENERATION_NAME.fullmatch(name))


def visible_names(target: Path) -> set[str]:
    return {name for name in os.listdir(target) if not name.startswith("..")}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def snapshot(target: Path) -> dict[str, tuple[int, bytes]]:
    return {path: (f.mode, f.contents) for path, f in read_current(target).items()}


KITCHEN_SINK = [
    projection("password", "s3cr3t", 0o644),
    projection("token", "tok", 0o600),
    projection("readonly", "ro", 0o400),
    projection("db/user", "admin", 0o644),
    projection("db/conf/settings.json", '{"a": 1}', 0o600),
    projection(".dotfile", "dot", 0o644),
]


# ---------------------------------------------------------------------------------------------
# Layout


def test_first_write_creates_the_kubernetes_layout(tmp_path: Path) -> None:
    assert AtomicWriter(tmp_path).write(KITCHEN_SINK) is True

    [generation] = generations(tmp_path)
    match = GENERATION_NAME.fullmatch(generation)
    assert match is not None
    stamp = datetime.strptime(match[1], "%Y_%m_%d_%H_%M_%S")
    assert abs(stamp.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds() < 120  # UTC
    assert mode_of(tmp_path / generation) == 0o755
    assert os.readlink(tmp_path / DATA_DIR_NAME) == generation
    assert set(os.listdir(tmp_path)) == {
        generation,
        DATA_DIR_NAME,
        "password",
        "token",
        "readonly",
        "db",
        ".dotfile",
    }
    # One symlink per first path component; nested files are reached through it.
    for name in ("password", "token", "readonly", "db", ".dotfile"):
        assert os.readlink(tmp_path / name) == f"..data/{name}"
    assert not (tmp_path / "db" / "user").is_symlink()
    assert (tmp_path / "db" / "user").read_text() == "admin"
    assert (tmp_path / "db/conf/settings.json").read_text() == '{"a": 1}'
    for directory in ("db", "db/conf"):
        assert mode_of(tmp_path / generation / directory) == 0o755
    for item in KITCHEN_SINK:
        path = tmp_path / generation / item.path
        assert stat.S_ISREG(os.lstat(path).st_mode)
        assert mode_of(path) == item.mode, item.path
        assert (tmp_path / item.path).read_bytes() == item.contents


def test_modes_are_exact_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        AtomicWriter(tmp_path).write(
            [projection("a", "x", 0o644), projection("b/c", "y", 0o755), projection("d", "", 0)]
        )
    finally:
        os.umask(previous)
    [generation] = generations(tmp_path)
    assert mode_of(tmp_path / generation) == 0o755
    assert mode_of(tmp_path / generation / "b") == 0o755
    assert mode_of(tmp_path / generation / "a") == 0o644
    assert mode_of(tmp_path / generation / "b/c") == 0o755
    assert mode_of(tmp_path / generation / "d") == 0


def test_large_and_binary_contents_round_trip(tmp_path: Path) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)
    AtomicWriter(tmp_path).write([projection("blob", blob), projection("empty", b"")])
    assert (tmp_path / "blob").read_bytes() == blob
    assert (tmp_path / "empty").read_bytes() == b""


def test_read_current_returns_the_live_generation(tmp_path: Path) -> None:
    assert read_current(tmp_path) == {}
    assert read_current(tmp_path / "missing") == {}
    AtomicWriter(tmp_path).write(KITCHEN_SINK)
    assert read_current(tmp_path) == {item.path: item for item in KITCHEN_SINK}


def test_file_projection_repr_hides_contents() -> None:
    text = repr(projection("password", "TOPSECRET"))
    assert "TOPSECRET" not in text
    assert "password" in text


# ---------------------------------------------------------------------------------------------
# Updates


def test_unchanged_payload_is_not_written_again(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    assert writer.write(KITCHEN_SINK) is True
    before_generations = generations(tmp_path)
    before_mtime = os.stat(tmp_path).st_mtime_ns
    time.sleep(0.05)  # so any change to the directory would move its mtime

    # Same files in another order, and as a mapping: still no update.
    as_mapping = {item.path: item for item in reversed(KITCHEN_SINK)}
    assert writer.write(as_mapping) is False
    assert writer.write(list(reversed(KITCHEN_SINK))) is False

    assert generations(tmp_path) == before_generations
    assert os.stat(tmp_path).st_mtime_ns == before_mtime


def test_content_change_swaps_to_a_new_generation(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "one"), projection("n/b", "one")])
    [old] = generations(tmp_path)

    assert writer.write([projection("a", "two"), projection("n/b", "one")]) is True

    [new] = generations(tmp_path)
    assert new != old
    assert not (tmp_path / old).exists()
    assert os.readlink(tmp_path / DATA_DIR_NAME) == new
    assert (tmp_path / "a").read_text() == "two"
    assert (tmp_path / "n/b").read_text() == "one"


def test_removed_paths_disappear(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write(
        [projection("a", "1"), projection("b", "2"), projection("s/c", "3"), projection("s/d", "4")]
    )
    assert visible_names(tmp_path) == {"a", "b", "s"}

    assert writer.write([projection("a", "1"), projection("s/c", "3")]) is True
    assert visible_names(tmp_path) == {"a", "s"}
    assert not (tmp_path / "s/d").exists()
    assert set(read_current(tmp_path)) == {"a", "s/c"}

    assert writer.write([projection("a", "1")]) is True
    assert visible_names(tmp_path) == {"a"}
    assert not os.path.lexists(tmp_path / "s")

    # An empty payload removes every file but keeps the (empty) generation and `..data`.
    assert writer.write([]) is True
    assert visible_names(tmp_path) == set()
    assert read_current(tmp_path) == {}
    assert len(generations(tmp_path)) == 1


def test_added_paths_appear_and_a_directory_can_become_a_file(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "1")])
    assert writer.write([projection("a", "1"), projection("x/y", "2")]) is True
    assert (tmp_path / "x/y").read_text() == "2"
    assert writer.write([projection("a", "1"), projection("x", "now a file")]) is True
    assert (tmp_path / "x").read_text() == "now a file"
    assert set(read_current(tmp_path)) == {"a", "x"}


def test_mode_only_change_is_written(tmp_path: Path) -> None:
    # Kubernetes' writer compares contents only; ours makes a new filePermission take effect.
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "same", 0o644)])
    [old] = generations(tmp_path)

    assert writer.write([projection("a", "same", 0o600)]) is True

    [new] = generations(tmp_path)
    assert new != old
    assert mode_of(tmp_path / new / "a") == 0o600
    assert read_current(tmp_path)["a"].mode == 0o600
    assert writer.write([projection("a", "same", 0o600)]) is False


def test_many_updates_keep_one_generation(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    for number in range(30):
        files = [projection(f"f{index}", f"{number}") for index in range(number % 4 + 1)]
        writer.write(files)
        assert snapshot(tmp_path) == {f.path: (0o644, f.contents) for f in files}
        assert len(generations(tmp_path)) == 1
        assert visible_names(tmp_path) == {f.path for f in files}


# ---------------------------------------------------------------------------------------------
# Leftovers and repairs


@pytest.mark.parametrize("leftover", ["dangling-symlink", "symlink", "directory"])
def test_leftover_data_tmp_does_not_block_writes(tmp_path: Path, leftover: str) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "old")])
    tmp_link = tmp_path / DATA_TMP_NAME
    if leftover == "dangling-symlink":
        os.symlink("..2001_01_01_00_00_00.gone", tmp_link)
    elif leftover == "symlink":
        os.symlink(generations(tmp_path)[0], tmp_link)
    else:
        tmp_link.mkdir()
        (tmp_link / "junk").write_text("junk")

    assert writer.write([projection("a", "new")]) is True
    assert not os.path.lexists(tmp_link)
    assert (tmp_path / "a").read_text() == "new"


def test_leftover_data_tmp_is_removed_even_without_an_update(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "same")])
    os.symlink("nowhere", tmp_path / DATA_TMP_NAME)
    assert writer.write([projection("a", "same")]) is False
    assert not os.path.lexists(tmp_path / DATA_TMP_NAME)


def test_generation_left_by_a_crash_is_removed_on_the_next_swap(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "1")])
    orphan = tmp_path / "..2001_02_03_04_05_06.crashed1"
    orphan.mkdir()
    (orphan / "a").write_text("half")
    unrelated = tmp_path / "..not-a-generation"
    unrelated.mkdir()

    writer.write([projection("a", "2")])

    assert not orphan.exists()
    assert unrelated.exists()  # only names in the generation pattern are ours to delete
    assert len(generations(tmp_path)) == 1


def test_generation_left_by_a_crash_is_removed_without_an_update(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "1")])
    orphan = tmp_path / "..2001_02_03_04_05_06.crashed2"
    orphan.mkdir()
    assert writer.write([projection("a", "1")]) is False
    assert not orphan.exists()
    assert (tmp_path / "a").read_text() == "1"


def test_files_written_by_an_old_provider_are_replaced(tmp_path: Path) -> None:
    # Upstream cleanupProviderFiles: non-symlink entries at payload names go away.
    (tmp_path / "password").write_text("legacy")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "old.crt").write_text("legacy")
    (tmp_path / "unrelated.txt").write_text("not in the payload")

    AtomicWriter(tmp_path).write([projection("password", "new"), projection("certs/tls.crt", "c")])

    assert os.readlink(tmp_path / "password") == "..data/password"
    assert os.readlink(tmp_path / "certs") == "..data/certs"
    assert (tmp_path / "password").read_text() == "new"
    assert os.listdir(tmp_path / "certs") == ["tls.crt"]
    # Like upstream, entries outside the payload are left alone.
    assert (tmp_path / "unrelated.txt").read_text() == "not in the payload"


def test_legacy_file_is_replaced_even_when_the_generation_is_current(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "1")])
    os.unlink(tmp_path / "a")
    (tmp_path / "a").write_text("planted")
    assert writer.write([projection("a", "1")]) is True
    assert os.readlink(tmp_path / "a") == "..data/a"
    assert (tmp_path / "a").read_text() == "1"


def test_missing_or_wrong_user_visible_links_are_repaired(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "1"), projection("b", "2")])
    [generation] = generations(tmp_path)
    os.unlink(tmp_path / "a")
    os.unlink(tmp_path / "b")
    os.symlink("/etc/hostname", tmp_path / "b")

    assert writer.write([projection("a", "1"), projection("b", "2")]) is True

    assert generations(tmp_path) == [generation]  # repaired without a new generation
    assert os.readlink(tmp_path / "a") == "..data/a"
    assert os.readlink(tmp_path / "b") == "..data/b"


def test_data_that_is_not_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / DATA_DIR_NAME).mkdir()
    with pytest.raises(WriteError, match="not a symlink"):
        AtomicWriter(tmp_path).write([projection("a", "1")])
    assert visible_names(tmp_path) == set()
    assert generations(tmp_path) == []


@pytest.mark.parametrize("points_to", ["/etc", "..", "../elsewhere", "..data", "plain"])
def test_data_pointing_outside_the_target_is_refused(tmp_path: Path, points_to: str) -> None:
    os.symlink(points_to, tmp_path / DATA_DIR_NAME)
    with pytest.raises(WriteError, match="not a generation directory"):
        AtomicWriter(tmp_path).write([projection("a", "1")])
    assert os.readlink(tmp_path / DATA_DIR_NAME) == points_to
    assert generations(tmp_path) == []


def test_dangling_data_link_gets_a_fresh_generation(tmp_path: Path) -> None:
    os.symlink("..2001_01_01_00_00_00.gone", tmp_path / DATA_DIR_NAME)
    assert read_current(tmp_path) == {}
    assert AtomicWriter(tmp_path).write([projection("a", "1")]) is True
    assert (tmp_path / "a").read_text() == "1"


def test_missing_target_directory_is_a_write_error(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match=re.escape(str(tmp_path / "nope"))):
        AtomicWriter(tmp_path / "nope").write([projection("a", "1")])


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("", "must not be empty"),
        ("/etc/passwd", "must be relative"),
        ("a" * 4097, "more than the maximum of 4096"),
        ("/".join(["a" * 240] * 17) + "x", "more than the maximum of 4096"),
        ("a" * 256, "longer than 255 bytes"),
        ("dir/" + "é" * 128, "longer than 255 bytes"),  # 256 bytes in UTF-8
        ("a/../b", "'..' component"),
        ("..", "'..' component"),
        ("a/..", "'..' component"),
        ("..data", "must not start with '..'"),
        ("..foo/bar", "must not start with '..'"),
        ("...", "must not start with '..'"),
        ("a//b", "not in clean form"),
        ("./a", "not in clean form"),
        ("a/", "not in clean form"),
        ("a/./b", "not in clean form"),
        (".", "not in clean form"),
        ("a\x00b", "NUL"),
        ("bad\udcff", "not valid UTF-8"),
    ],
)
def test_invalid_paths_are_refused_and_nothing_is_written(
    tmp_path: Path, path: str, rule: str
) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("keep", "old")])
    before = (os.listdir(tmp_path), snapshot(tmp_path))

    with pytest.raises(PayloadError, match=re.escape(rule)) as caught:
        writer.write([projection("keep", "TOPSECRET-NEW"), projection(path, "TOPSECRET")])

    assert "TOPSECRET" not in str(caught.value)
    assert (os.listdir(tmp_path), snapshot(tmp_path)) == before
    with pytest.raises(PayloadError):
        validate_path(path)


@pytest.mark.parametrize(
    "path",
    [
        ".dotfile",
        "a/..b",
        "a/b..",
        "a..",
        "x" * 255,
        "/".join(["a" * 240] * 17),  # exactly 4096 bytes
        "with space/and\\backslash",
        "ünïcode",
    ],
)
def test_valid_edge_paths_are_accepted(path: str) -> None:
    validate_path(path)


def test_edge_paths_that_fit_the_filesystem_are_written(tmp_path: Path) -> None:
    paths = [".dotfile", "a/..b", "x" * 255, "with space/and\\backslash", "ünïcode"]
    AtomicWriter(tmp_path).write([projection(path, path) for path in paths])
    for path in paths:
        assert (tmp_path / path).read_text() == path


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        ([projection("a", "1"), projection("a", "2")], "appears more than once"),
        ([projection("a", "1"), projection("a/b", "2")], "also the directory of"),
        ([projection("x/a", "1"), projection("x/a/b/c", "2")], "also the directory of"),
        ([FileProjection("a", 0o1000, b"")], "0..0o777"),
        ([FileProjection("a", 0o4755, b"")], "0..0o777"),
        ([FileProjection("a", -1, b"")], "0..0o777"),
        ([FileProjection("a", True, b"")], "0..0o777"),
        ([FileProjection("a", 0o644, "text")], "must be bytes"),  # type: ignore[arg-type]
        ({"b": projection("a", "1")}, "differs from its file path"),
        (["a"], "must be FileProjection"),
    ],
)
def test_invalid_payloads_are_refused_and_nothing_is_written(
    tmp_path: Path, payload: object, rule: str
) -> None:
    with pytest.raises(PayloadError, match=re.escape(rule)):
        validate_payload(payload)  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match=re.escape(rule)):
        AtomicWriter(tmp_path).write(payload)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_payload_error_is_a_value_error() -> None:
    assert issubclass(PayloadError, ValueError)


# ---------------------------------------------------------------------------------------------
# Failures leave the previous generation in place


def fail_on_call(
    monkeypatch: pytest.MonkeyPatch, name: str, call_number: int, error: int = errno.ENOSPC
) -> None:
    """Make `os.<name>` raise OSError(error) on its `call_number`-th call (1-based)."""
    real: Callable[..., object] = getattr(os, name)
    calls = 0

    def failing(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == call_number:
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize(
    ("function", "call_number"),
    [
        ("replace", 1),  # the `..data` swap itself
        ("symlink", 1),  # creating `..data_tmp`
        ("write", 3),  # the third file of the new generation
        ("fsync", 2),  # flushing the second file
        ("mkdir", 1),  # the generation directory (tempfile.mkdtemp)
        ("mkdir", 2),  # a nested directory of the new generation
        ("chmod", 1),  # the generation directory's mode
    ],
)
def test_failure_mid_write_keeps_the_previous_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str, call_number: int
) -> None:
    writer = AtomicWriter(tmp_path)
    old = [projection("a", "old-a"), projection("b", "old-b"), projection("n/c", "old-c")]
    writer.write(old)
    before_listing = sorted(os.listdir(tmp_path))
    before = snapshot(tmp_path)

    fail_on_call(monkeypatch, function, call_number)
    new = [projection("a", "new-a"), projection("b", "new-b"), projection("n/d", "new-d")]
    with pytest.raises(WriteError) as caught:
        writer.write([*new, projection("added", "x")])
    monkeypatch.undo()

    message = str(caught.value)
    assert str(tmp_path) in message
    assert os.strerror(errno.ENOSPC) in message
    assert isinstance(caught.value.__cause__, OSError)
    assert sorted(os.listdir(tmp_path)) == before_listing  # no half-written generation left
    assert snapshot(tmp_path) == before
    for item in old:
        assert (tmp_path / item.path).read_bytes() == item.contents

    # The next write works normally.
    assert writer.write(new) is True
    assert snapshot(tmp_path) == {f.path: (f.mode, f.contents) for f in new}


def test_failure_on_the_first_write_leaves_an_empty_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_on_call(monkeypatch, "replace", 1, errno.EIO)
    with pytest.raises(WriteError, match=os.strerror(errno.EIO)):
        AtomicWriter(tmp_path).write([projection("a", "1")])
    assert os.listdir(tmp_path) == []


def test_failure_removing_the_old_generation_is_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write([projection("a", "1")])
    [old] = generations(tmp_path)

    def failing_rmtree(path: str, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)

    monkeypatch.setattr(shutil, "rmtree", failing_rmtree)
    assert writer.write([projection("a", "2")]) is True
    monkeypatch.undo()

    assert (tmp_path / "a").read_text() == "2"
    assert old in generations(tmp_path)
    assert "Cannot remove an old generation" in caplog.text
    writer.write([projection("a", "3")])
    assert len(generations(tmp_path)) == 1  # the next swap frees it


# ---------------------------------------------------------------------------------------------
# remove_all


def test_remove_all_empties_the_target_without_following_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    AtomicWriter(target).write(KITCHEN_SINK)
    os.symlink(outside, target / "link-to-outside")
    os.symlink(outside, target / "..dotlink")
    (target / "..some-dir").mkdir()

    remove_all(target)

    assert os.listdir(target) == []
    assert (outside / "precious").read_text() == "keep me"
    remove_all(target)  # idempotent
    remove_all(tmp_path / "missing")  # a missing target is fine


def test_remove_all_keeps_named_entries(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("1")
    (tmp_path / "..marker").write_text("")
    remove_all(tmp_path, keep={"..marker"})
    assert os.listdir(tmp_path) == ["..marker"]


def test_remove_all_reports_entries_it_cannot_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
    real_unlink = os.unlink

    def unlink(path: str, *args: object, **kwargs: object) -> None:
        if os.path.basename(path) == "b":
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(WriteError, match=r"cannot remove 1 of 3 entries"):
        remove_all(tmp_path)
    assert os.listdir(tmp_path) == ["b"]  # the others were still removed


# ---------------------------------------------------------------------------------------------
# Concurrency: a reader never sees a mix of generations


CONCURRENT_PATHS = ("alpha", "beta", "nested/gamma", "nested/deep/delta", "omega")


def generation_payload(number: int) -> list[FileProjection]:
    # Sizes vary per generation and path, so a torn or truncated read cannot parse.
    return [
        FileProjection(path, 0o644, f"gen={number};".encode() * (1 + (number + index) % 37))
        for index, path in enumerate(CONCURRENT_PATHS)
    ]


def parse_generation(data: bytes) -> int:
    records = data.split(b";")
    if not data.endswith(b";") or len(set(records[:-1])) != 1 or records[-1] != b"":
        raise ValueError(f"torn read: {data[:60]!r}")
    return int(records[0].removeprefix(b"gen="))


class GenerationReader(threading.Thread):
    """Reads every file over and over, as a consumer would, and records inconsistencies."""

    def __init__(self, target: Path) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.consistent_snapshots = 0
        self.consistent_visible_reads = 0
        self.retries = 0
        self.seen: set[int] = set()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.problems) < 5:
            try:
                self.read_through_data_link()
                self.read_through_visible_paths()
            except Exception as exc:  # anything unexpected is a failure of the test
                self.problems.append(f"reader crashed: {exc!r}")

    def read_through_data_link(self) -> None:
        # Resolve `..data` once and read every file of that generation.
        generation = os.readlink(self.target / DATA_DIR_NAME)
        try:
            numbers = [
                parse_generation((self.target / generation / path).read_bytes())
                for path in CONCURRENT_PATHS
            ]
        except FileNotFoundError:
            self.retries += 1  # the old generation was removed under us: read again
            return
        if len(set(numbers)) != 1:
            self.problems.append(f"mixed generations in {generation}: {numbers}")
        self.consistent_snapshots += 1
        self.seen.add(numbers[0])

    def read_through_visible_paths(self) -> None:
        # What an application does: open each user-visible path. Each file must be whole, the
        # generations never go backwards, and if `..data` did not move meanwhile, all agree.
        before = os.readlink(self.target / DATA_DIR_NAME)
        try:
            numbers = [
                parse_generation((self.target / path).read_bytes()) for path in CONCURRENT_PATHS
            ]
        except FileNotFoundError:
            self.retries += 1
            return
        after = os.readlink(self.target / DATA_DIR_NAME)
        if numbers != sorted(numbers):
            self.problems.append(f"generations went backwards: {numbers}")
        if before == after:
            if len(set(numbers)) != 1:
                self.problems.append(f"mixed generations while ..data stayed {before}: {numbers}")
            self.consistent_visible_reads += 1


@pytest.fixture
def memory_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs when there is one (the production filesystem), else tmp_path."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="dew-csi-test-") as directory:
            yield Path(directory)
    else:
        yield tmp_path


def run_writer_against_reader(target: Path, write: Callable[[int], object]) -> GenerationReader:
    write(0)
    reader = GenerationReader(target)
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two threads as finely as possible
    reader.start()
    try:
        number = 0
        deadline = time.monotonic() + 8
        while number < 1000 or (reader.consistent_snapshots < 200 and time.monotonic() < deadline):
            number += 1
            write(number)
            if reader.problems:
                break
    finally:
        reader.stop.set()
        reader.join(timeout=10)
        sys.setswitchinterval(previous_interval)
    return reader


def test_reader_never_sees_a_mix_of_generations(memory_dir: Path) -> None:
    writer = AtomicWriter(memory_dir)
    reader = run_writer_against_reader(memory_dir, lambda n: writer.write(generation_payload(n)))

    assert reader.problems == []
    # The reader really ran alongside the writer: it saw many generations, many times.
    assert reader.consistent_snapshots >= 200
    assert reader.consistent_visible_reads >= 50
    assert len(reader.seen) >= 20


@pytest.mark.parametrize("per_file_rename", [False, True], ids=["in-place", "per-file-rename"])
def test_the_reader_catches_a_writer_that_is_not_atomic(
    memory_dir: Path, per_file_rename: bool
) -> None:
    # Proves the check above can fail. Rewriting files in place is seen as torn or mixed;
    # replacing each file atomically but not the set as a whole is still seen as mixed.
    generation = memory_dir / "..2001_01_01_00_00_00.inplace"
    (generation / "nested/deep").mkdir(parents=True)
    os.symlink(generation.name, memory_dir / DATA_DIR_NAME)
    for name in ("alpha", "beta", "nested", "omega"):
        os.symlink(f"..data/{name}", memory_dir / name)

    def write_file_by_file(number: int) -> None:
        for item in generation_payload(number):
            path = generation / item.path
            if per_file_rename:
                staged = path.with_name(path.name + ".new")
                staged.write_bytes(item.contents)
                os.replace(staged, path)
            else:
                path.write_bytes(item.contents)

    reader = run_writer_against_reader(memory_dir, write_file_by_file)

    assert reader.problems, "a non-atomic writer went unnoticed"
    if per_file_rename:
        assert all("torn" not in problem for problem in reader.problems)
