"""What the benchmarks share: starting dew-csi components as child processes, and the figures
they print (percentiles, a process's RSS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def spawn(
    argv: list[str], pattern: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """`dew-csi ARGV` as a child; the process and `pattern`'s group 1 in its first stdout line
    (the address it listens on). Its stderr is discarded: benchmarks print figures only."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dew_csi.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(pattern, line)
    if not match:
        process.kill()
        raise SystemExit(f"{argv[0]} did not start: {line!r}")
    return process, match.group(1)


def start_emulators(
    directory: str, project: str, ak: str, sk: str
) -> tuple[subprocess.Popen[str], str, subprocess.Popen[str], str]:
    """The Kubernetes API emulator (kubeconfig in DIRECTORY/kubeconfig) and the CSMS emulator;
    (api, api_url, csms, csms_url)."""
    api, api_url = spawn(
        [
            "sandbox",
            "apiserver",
            "--listen",
            "127.0.0.1:0",
            "--kubeconfig-out",
            f"{directory}/kubeconfig",
        ],
        r"(http://\S+)",
    )
    csms, csms_url = spawn(
        [
            "csms-emulator",
            "--listen",
            "127.0.0.1:0",
            "--project-id",
            project,
            "--ak",
            ak,
            "--sk",
            sk,
        ],
        r"(http://\S+)",
    )
    return api, api_url, csms, csms_url


def start_provider(
    directory: str, csms_url: str, project: str, ak: str, sk: str
) -> tuple[subprocess.Popen[str], str]:
    """`dew-csi provider` with its socket in DIRECTORY/providers, the API emulator's kubeconfig
    from `start_emulators`, and credentials from the environment; (process, socket path)."""
    return spawn(
        [
            "provider",
            "--socket-dir",
            f"{directory}/providers",
            "--csms-endpoint",
            csms_url,
            "--project-id",
            project,
            "--kubeconfig",
            f"{directory}/kubeconfig",
            "--metadata-url",
            "none",
        ],
        r"listening on (\S+)",
        env={"HUAWEICLOUD_SDK_AK": ak, "HUAWEICLOUD_SDK_SK": sk, "PATH": os.environ["PATH"]},
    )


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_mib(pid: int | str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
