"""The `dew-csi` command: argument parsing and dispatch.

Each subcommand's implementation is imported only when that subcommand runs, so `dew-csi --help`
stays fast and one component's dependencies are not loaded by another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

from dew_csi import __version__

Runner = Callable[[argparse.Namespace], int]


def _bind(parser: argparse.ArgumentParser, target: str) -> None:
    """Record which `module:function` runs this subcommand."""
    parser.set_defaults(_target=target)


def _add_sandbox(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sandbox = subparsers.add_parser("sandbox", help="the local cluster: API emulator and friends")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)

    apiserver = sandbox_sub.add_parser(
        "apiserver",
        help="run the Kubernetes API emulator",
        description="Serve the Kubernetes REST and watch API from memory, for the sandbox and tests.",
    )
    apiserver.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="HOST:PORT to listen on; port 0 picks a free port and prints it (default 127.0.0.1:0)",
    )
    apiserver.add_argument("--state", help="file to persist state to, restored on restart")
    apiserver.add_argument("--token", help="require this bearer token on every request")
    apiserver.add_argument("--kubeconfig-out", help="write a kubeconfig for this server to FILE")
    _bind(apiserver, "dew_csi.sandbox.apiserver:run_from_args")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dew-csi",
        description="Secrets Store CSI driver and Huawei Cloud CSMS provider (CCE Secrets Manager "
        "for DEW).",
    )
    parser.add_argument("--version", action="version", version=f"dew-csi {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_sandbox(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, _, function_name = cast(str, args._target).partition(":")
    runner = cast(Runner, getattr(importlib.import_module(module_name), function_name))
    try:
        return runner(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
