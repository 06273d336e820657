"""`dew-csi csms put|get|list`: manage secrets in a CSMS endpoint (the emulator or Huawei Cloud).

Where to connect and with which credentials, highest precedence first:

1. `--endpoint` (or `--region`), `--project-id`;
2. the `--env-file` (shell-sourceable `KEY=value` lines, as `dew-csi sandbox up` writes
   `sandbox/csms.env`): `CSMS_ENDPOINT`, `HUAWEICLOUD_SDK_REGION`, `HUAWEICLOUD_SDK_AK`,
   `HUAWEICLOUD_SDK_SK`, `HUAWEICLOUD_SDK_SECURITY_TOKEN`, `HUAWEICLOUD_SDK_PROJECT_ID`;
3. the same variables in the environment.

Messages and `dew-csi check` name where the AK/SK really came from: the `--env-file`, the
environment variables, or each variable's own place when they are mixed.

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
    Credentials,
    CredentialsError,
    CredentialsProvider,
    CredentialsUnavailable,
    CsmsClient,
    CsmsClientConfig,
    CsmsError,
    SecretNotFound,
)
from dew_csi.csms.client import RetryPolicy
from dew_csi.csms.credentials import ENV_AK, ENV_SECURITY_TOKEN, ENV_SK

ENV_ENDPOINT: Final = "CSMS_ENDPOINT"
ENV_REGION: Final = "HUAWEICLOUD_SDK_REGION"
ENV_PROJECT_ID: Final = "HUAWEICLOUD_SDK_PROJECT_ID"
PROGRAM: Final = "dew-csi csms"
WHERE_IS_CSMS: Final = (
    f"pass --endpoint URL or --region REGION, or --env-file with {ENV_ENDPOINT} (dew-csi sandbox "
    f"up writes DIR/csms.env)"
)


class UsageError(Exception):
    """Bad options or an unreadable file: exit 2 with the message."""


class NoCsmsLocation(UsageError):
    """Neither an endpoint nor a region was given anywhere."""


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
class CsmsEnvironment:
    """The variables CSMS settings and credentials are read from: the --env-file over the
    process environment, remembering which ones the file set."""

    values: dict[str, str]
    env_file: str | None = None
    from_env_file: frozenset[str] = frozenset()

    def value(self, key: str) -> str | None:
        return self.values.get(key, "").strip() or None

    def origin(self, key: str) -> str:
        return f"--env-file {self.env_file}" if key in self.from_env_file else "the environment"

    @property
    def credentials_source(self) -> str:
        """Where the AK/SK (and security token) come from, as the user would say it."""
        used = [key for key in (ENV_AK, ENV_SK, ENV_SECURITY_TOKEN) if self.value(key)]
        origins = {self.origin(key) for key in used}
        if not used:
            return self.searched
        if origins == {"the environment"}:
            return f"the environment variables {_and(used)}"
        if len(origins) == 1:
            return origins.pop()
        return ", ".join(f"{key} from {self.origin(key)}" for key in used)

    @property
    def searched(self) -> str:
        """Where the AK/SK were looked for."""
        if self.env_file is None:
            return "the environment"
        return f"the environment and --env-file {self.env_file}"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


class EnvCredentialsProvider(CredentialsProvider):
    """`HUAWEICLOUD_SDK_AK`/`_SK` (with `_SECURITY_TOKEN`, `_PROJECT_ID`) from a
    `CsmsEnvironment`; the credentials' `source` says where they really came from."""

    def __init__(self, environment: CsmsEnvironment) -> None:
        self._environment = environment
        self.name = environment.credentials_source

    async def get(self) -> Credentials:
        environment = self._environment
        ak, sk = environment.value(ENV_AK), environment.value(ENV_SK)
        if ak is None and sk is None:
            raise CredentialsUnavailable(
                f"{environment.searched}: neither {ENV_AK} nor {ENV_SK} is set"
            )
        if ak is None or sk is None:
            present, missing = (ENV_AK, ENV_SK) if sk is None else (ENV_SK, ENV_AK)
            raise CredentialsError(
                f"{present} is set (in {environment.origin(present)}) but {missing} is "
                f"missing or empty in {environment.searched}: set both"
            )
        return Credentials(
            ak=ak,
            sk=sk,
            security_token=environment.value(ENV_SECURITY_TOKEN),
            project_id=environment.value(ENV_PROJECT_ID),
            source=environment.credentials_source,
        )


@dataclass(frozen=True)
class Connection:
    config: CsmsClientConfig
    environment: CsmsEnvironment
    """Where the credentials are read from (the env file over the process environment)."""


def environment_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> CsmsEnvironment:
    """The process environment with the --env-file (if any) over it."""
    merged = dict(os.environ if environ is None else environ)
    env_file = getattr(args, "env_file", None) or None
    if env_file is None:
        return CsmsEnvironment(merged)
    from_file = parse_env_file(Path(env_file))
    merged.update(from_file)
    return CsmsEnvironment(merged, env_file, frozenset(from_file))


def csms_config_from_args(
    args: argparse.Namespace,
    environment: CsmsEnvironment,
    *,
    retry: RetryPolicy | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 15.0,
) -> CsmsClientConfig:
    """Where CSMS is and how to reach it, from the options, then the --env-file, then the
    environment. Used by `csms` and `check`. `NoCsmsLocation` when no endpoint or region is
    given anywhere."""
    merged = environment.values
    endpoint = getattr(args, "endpoint", None)
    region = getattr(args, "region", None)
    if endpoint and region:
        raise UsageError("give either --endpoint or --region, not both")
    if not endpoint and not region:
        endpoint = merged.get(ENV_ENDPOINT) or None
        region = None if endpoint else merged.get(ENV_REGION) or None
    if not endpoint and not region:
        raise NoCsmsLocation(f"where is CSMS? {WHERE_IS_CSMS}")
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
    return config


def connection_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Connection:
    environment = environment_from_args(args, environ)
    config = csms_config_from_args(args, environment)
    if not config.project_id:
        raise UsageError(
            f"no project id: pass --project-id, set {ENV_PROJECT_ID}, or use --env-file"
        )
    return Connection(config, environment)


def _client(connection: Connection) -> CsmsClient:
    try:
        return CsmsClient(EnvCredentialsProvider(connection.environment), connection.config)
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
    except CredentialsError as error:
        # Configured, but half: one of the pair is missing. The user's to fix, like any option.
        print(f"{PROGRAM}: CSMS credentials: {error}", file=sys.stderr)
        return 2
    except CsmsError as error:
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
