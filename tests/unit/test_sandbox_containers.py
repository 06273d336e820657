"""The sandbox's container registry and log reading (pure parts of containers.py): line times,
kubelet's output rules, the registry file, the add-on's manifests."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dew_csi.sandbox import containers
from dew_csi.sandbox.containers import LogLine, LogOptions, LogWriter

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"I0102 03:04:05.000001    7 app.py:1] x\n", datetime(2026, 1, 2, 3, 4, 5, 1, UTC)),
        (
            b"W1231 23:59:59.500000    7 app.py:1] x\n",
            datetime(2025, 12, 31, 23, 59, 59, 500000, UTC),
        ),
        # A day ahead at most counts as this year (clocks differ a little); beyond, last year.
        (b"E0103 03:04:05.000000    7 a.py:1] x\n", datetime(2026, 1, 3, 3, 4, 5, tzinfo=UTC)),
        (b"E0104 03:04:05.000000    7 a.py:1] x\n", datetime(2025, 1, 4, 3, 4, 5, tzinfo=UTC)),
        (
            b'{"ts": "2026-01-02T01:00:00.250000+00:00", "level": "info"}\n',
            datetime(2026, 1, 2, 1, 0, 0, 250000, UTC),
        ),
        (b"dew-csi driver listening on /x\n", None),
        (b"Traceback (most recent call last):\n", None),
        (b"I1340 03:04:05.000000    7 a.py:1] not a date\n", None),
    ],
)
def test_line_time(line: bytes, expected: datetime | None) -> None:
    assert containers.line_time(line, NOW) == expected


def test_timestamps_have_nine_fraction_digits() -> None:
    when = datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)
    assert containers.timestamp_prefix(when) == b"2026-03-04T05:06:07.000890000Z "


def lines(*texts: str) -> list[LogLine]:
    return [LogLine(NOW + timedelta(seconds=i), t.encode()) for i, t in enumerate(texts)]


def test_the_writer_tails_then_filters_then_limits() -> None:
    batch = lines("a\n", "b\n", "c\n", "d\n")
    assert LogWriter(LogOptions()).first(batch) == b"a\nb\nc\nd\n"
    assert LogWriter(LogOptions(tail_lines=2)).first(batch) == b"c\nd\n"
    assert LogWriter(LogOptions(tail_lines=0)).first(batch) == b""
    assert LogWriter(LogOptions(tail_lines=9)).first(batch) == b"a\nb\nc\nd\n"
    since = NOW + timedelta(seconds=2)
    assert LogWriter(LogOptions(since=since)).first(batch) == b"c\nd\n"
    # kubelet tails first: of the last 3 lines, those since the time.
    assert LogWriter(LogOptions(tail_lines=3, since=since)).first(batch) == b"c\nd\n"
    stamped = LogWriter(LogOptions(timestamps=True, tail_lines=1)).first(batch)
    assert stamped == b"2026-01-02T03:04:08.000000000Z d\n"
    limited = LogWriter(LogOptions(limit_bytes=3))
    assert limited.first(batch) == b"a\nb"
    assert limited.done
    assert limited.render(lines("more\n")) == b""


def test_the_reader_reads_what_was_added_and_dates_lines_without_a_time(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"=== earlier ===\nfirst\n")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    reader = containers.ContainerLogReader(path, len(b"=== earlier ===\n"), start)
    assert reader.read(final=False) == [LogLine(start, b"first\n")]
    klog = "I0102 03:04:05.000000    7 a.py:1] x\n"
    with path.open("a") as handle:
        handle.write(klog + "printed\nunfinish")
    got = reader.read(final=False)
    assert [line.text for line in got] == [klog.encode(), b"printed\n"]
    assert got[1].time == got[0].time != start
    assert reader.read(final=False) == []
    assert [line.text for line in reader.read(final=True)] == [b"unfinish"]


def test_registry_round_trip_and_reload(tmp_path: Path) -> None:
    pod = containers.SystemPod(
        "kube-system",
        "dew-provider-b2c4d",
        "provider",
        os.getpid(),
        containers.process_start_ticks(os.getpid()) or 0,
        "2026-01-02T03:04:05Z",
        {"dew-provider": containers.ContainerLog("/x/provider.log", 41, True)},
    )
    registry = containers.Registry((pod,))
    assert containers.Registry.from_json(registry.to_json()) == registry
    assert registry.find("kube-system", "dew-provider-b2c4d") == pod
    assert registry.find("default", "dew-provider-b2c4d") is None
    assert pod.alive()

    path = tmp_path / containers.REGISTRY_FILE
    watched = containers.RegistryFile(path)
    assert watched.current() == containers.Registry()
    path.write_text(registry.to_json())
    assert watched.current() == registry
    path.write_text("{not json")
    time.sleep(0.01)
    assert watched.current() == containers.Registry()
    path.write_text(registry.to_json().replace("2026-01-02T03:04:05Z", "yesterday"))
    assert watched.current() == containers.Registry()
    assert containers.load_registry(None) == containers.Registry()


def test_a_gone_or_reused_pid_is_not_alive() -> None:
    ticks = containers.process_start_ticks(os.getpid())
    assert ticks is not None
    reused = containers.SystemPod("n", "p", "driver", os.getpid(), ticks + 1, "", {})
    assert not reused.alive()
    assert containers.process_start_ticks(2**22 + 7) is None
    started = containers.started_at(ticks)
    assert abs(started - datetime.now(UTC)) < timedelta(days=365)


def test_the_add_on_pods_are_shaped_as_deploy_has_them() -> None:
    driver, provider = containers.addon_pods(["python", "driver"], ["python", "provider"], "/s")
    assert driver.container_names == ["node-driver-registrar", "secrets-store", "liveness-probe"]
    assert provider.container_names == ["dew-provider"]
    assert driver.template["spec"]["containers"][1]["command"] == ["python"]
    assert driver.template["spec"]["containers"][1]["args"] == ["driver"]
    owner = {"metadata": {"name": "csi-secrets-store", "uid": "u-1"}}
    pod = containers.pod_manifest(driver, "csi-secrets-store-b2c4d", "node-a", owner)
    assert pod["spec"]["nodeName"] == "node-a"
    [reference] = pod["metadata"]["ownerReferences"]
    assert reference == {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "name": "csi-secrets-store",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert "nodeName" not in driver.template["spec"]  # the template is left alone
    suffix = containers.name_suffix()
    assert len(suffix) == 5
    assert set(suffix) <= set(containers.NAME_ALPHABET)


def test_klog_lines_are_appended(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "x.log"
    assert containers.write_klog(path, [("first", {"a": 1})]) == 0
    size = path.stat().st_size
    assert containers.write_klog(path, [("second", {})]) == size
    written = path.read_text().splitlines()
    assert written[0].endswith('] "first" a=1')
    assert written[1].endswith("] second")
    assert containers.line_time(written[0].encode(), datetime.now(UTC)) is not None
