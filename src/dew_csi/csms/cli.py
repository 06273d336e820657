"""`dew-csi csms put|get|list`: manage secrets in a CSMS endpoint (the emulator or Huawei Cloud).

Where to connect and with which credentials, highest precedence first:

1. `--endpoint` (or `--region`), `--project-id`;
2. the `--env-file` (shell-sourceable `KEY=value` lines, as `dew-csi sandbox up` writes
   `sandbox/csms.env`): `CSMS_ENDPOINT`, `HUAWEICLOUD_SDK_REGION`, `HUAWEICLOUD_SDK_AK`,
   `HUAWEICLOUD_SDK_SK`, `HUAWEICLOUD_SDK_SECURITY_TOKEN`, `HUAWEICLOUD_SDK_PROJECT_ID`;
3. the same variables in the environment.

`get` prints the secret's value to stdout (that is what it is for); nothing else ever prints a
value, and no message carries the secret key.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dew_csi.csms import (
    CredentialsError,
    CredentialsUnavailable,
    CsmsClient,
    CsmsClientConfig,
    CsmsError,
    EnvironmentCredentialsProvider,
    SecretNotFound,
)
from dew_csi.csms.client import RetryPolicy

ENV_ENDPOINT: Final = "CSMS_ENDPOINT"
ENV_REGION: Final = "HUAWEICLOUD_SDK_REGION"
ENV_PROJECT_ID: Final = "HUAWEICLOUD_SDK_PROJECT_ID"
PROGRAM: Final = "dew-csi csms"


class UsageError(Exception):
    """Bad options or an unreadable file: exit 2 with the message."""


def parse_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines as a POSIX shell would read them (quotes, `export`, comments)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise UsageError(f"cannot read the env file {path}: {error.strerror}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise UsageError(f"{path}:{number}: {error}") from None
        if words and words[0] == "export":
            words = words[1:]
        for word in words:
            key, sep, value = word.partition("=")
            if not sep or not key.isidentifier():
                raise UsageError(f"{path}:{number}: expected KEY=value")
            values[key] = value
    return values


@dataclass(frozen=True)
class Connection:
    config: CsmsClientConfig
    environ: dict[str, str]
    """Where the credentials are read from (the env file over the process environment)."""


def csms_config_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    retry: RetryPolicy | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 15.0,
) -> tuple[CsmsClientConfig, dict[str, str]]:
    """Where CSMS is and how to reach it, from the options, then the --env-file, then the
    environment; and the merged environment (for credentials). Used by `csms` and `check`."""
    merged = dict(os.environ if environ is None else environ)
    env_file = getattr(args, "env_file", None)
    if env_file:
        merged.update(parse_env_file(Path(env_file)))
    endpoint = getattr(args, "endpoint", None)
    region = getattr(args, "region", None)
    if endpoint and region:
        raise UsageError("give either --endpoint or --region, not both")
    if not endpoint and not region:
        endpoint = merged.get(ENV_ENDPOINT) or None
        region = None if endpoint else merged.get(ENV_REGION) or None
    if not endpoint and not region:
        raise UsageError(
            f"where is CSMS? pass --endpoint URL or --region REGION, or --env-file with "
            f"{ENV_ENDPOINT} (dew-csi sandbox up writes DIR/csms.env)"
        )
    config = CsmsClientConfig(
        region=region,
        endpoint=endpoint,
        project_id=getattr(args, "project_id", None) or merged.get(ENV_PROJECT_ID) or None,
        verify_tls=not getattr(args, "insecure_skip_tls_verify", False),
        ca_bundle=getattr(args, "ca_file", None),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retry=retry or RetryPolicy(max_attempts=3, deadline=15.0),
    )
    try:
        config.resolved_endpoint()
    except ValueError as error:
        raise UsageError(str(error)) from None
    return config, merged


def connection_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Connection:
    config, merged = csms_config_from_args(args, environ)
    if not config.project_id:
        raise UsageError(
            f"no project id: pass --project-id, set {ENV_PROJECT_ID}, or use --env-file"
        )
    return Connection(config, merged)


def _client(connection: Connection) -> CsmsClient:
    try:
        return CsmsClient(EnvironmentCredentialsProvider(connection.environ), connection.config)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _read_value(args: argparse.Namespace) -> str | bytes:
    """The value to store: VALUE, `-` (stdin) or --file; bytes that are not UTF-8 (or with
    --binary) are stored as secret_binary."""
    if args.file is not None and args.value is not None:
        raise UsageError("give either VALUE or --file, not both")
    if args.file is None and args.value is None:
        raise UsageError("give the value: VALUE, - for stdin, or --file FILE")
    if args.file is not None:
        try:
            data = Path(args.file).read_bytes()
        except OSError as error:
            raise UsageError(f"cannot read {args.file}: {error.strerror}") from None
    elif args.value == "-":
        data = sys.stdin.buffer.read()
    else:
        data = str(args.value).encode("utf-8", "surrogateescape")
    if args.binary:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


async def _put(connection: Connection, name: str, value: str | bytes) -> str:
    """Add a version (creating the secret when it does not exist); the new version's id."""
    async with _client(connection) as csms:
        try:
            return (await csms.put_version(name, value)).version_id
        except SecretNotFound:
            pass
        await csms.create_secret(name, value)
        versions = await csms.list_versions(name)
        current = next((v for v in versions if "SYSCURRENT" in v.stages), None)
        return current.version_id if current is not None else "v1"


async def _get(connection: Connection, name: str, version: str) -> bytes:
    async with _client(connection) as csms:
        return (await csms.get_secret_version(name, version)).value


async def _list(connection: Connection, versions_of: str | None) -> list[str]:
    async with _client(connection) as csms:
        if versions_of is None:
            return sorted(s.name for s in await csms.list_secrets())
        versions = await csms.list_versions(versions_of)
        ordered = sorted(versions, key=lambda v: _version_number(v.version_id))
        return [f"{v.version_id}\t{','.join(v.stages) or '-'}" for v in ordered]


def _version_number(version_id: str) -> tuple[int, str]:
    digits = version_id[1:] if version_id[:1] == "v" else ""
    return (int(digits), version_id) if digits.isdigit() else (sys.maxsize, version_id)


def _run(action: str, args: argparse.Namespace) -> int:
    try:
        connection = connection_from_args(args)
        if action == "put":
            value = _read_value(args)
            print(asyncio.run(_put(connection, args.name, value)), flush=True)
        elif action == "get":
            data = asyncio.run(_get(connection, args.name, args.version))
            sys.stdout.buffer.write(data)
            if sys.stdout.isatty() and not data.endswith(b"\n"):
                sys.stdout.buffer.write(b"\n")
            sys.stdout.buffer.flush()
        else:
            for line in asyncio.run(_list(connection, args.versions)):
                print(line)
    except UsageError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    except CredentialsUnavailable:
        print(
            f"{PROGRAM}: no CSMS credentials: set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or "
            "pass --env-file FILE (dew-csi sandbox up writes DIR/csms.env)",
            file=sys.stderr,
        )
        return 2
    except (CsmsError, CredentialsError) as error:
        print(f"{PROGRAM} {action}: {error}", file=sys.stderr)
        return 1
    return 0


def put_from_args(args: argparse.Namespace) -> int:
    """`dew-csi csms put NAME VALUE|-|--file F`: prints the new version id."""
    return _run("put", args)


def get_from_args(args: argparse.Namespace) -> int:
    """`dew-csi csms get NAME [--version v1|latest]`: prints the value."""
    return _run("get", args)


def list_from_args(args: argparse.Namespace) -> int:
    """`dew-csi csms list [--versions NAME]`."""
    return _run("list", args)
