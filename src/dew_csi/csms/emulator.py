"""A local emulator of the Huawei Cloud CSMS v1 API (aiohttp), for tests and the sandbox.

What it serves (reference csms-api.md §1.1, §2, §3):

* secrets: create, show, list (limit/marker), update, delete;
* versions: create, show (`v1`, `v2`, ... and `latest`), list, update (expire_time);
* stages: show, update (move), delete; SYSCURRENT/SYSPREVIOUS move as CSMS moves them;
* the documented limits (name pattern, 32768-character values, 20 versions, 12 stages,
  500 secrets) and CSMS-style error bodies `{"error_code", "error_msg"}`.

Every API request must be signed with SDK-HMAC-SHA256 (the permanent AK/SK, or a temporary
AK/SK with its `X-Security-Token`), dated within 15 minutes, for the configured project. Refusals
look like the API gateway's: HTTP 401 `APIG.0301` "Incorrect IAM authentication information: ...".

Admin API under `/_emulator/` (loopback only, not signed; JSON):

* `GET requests` → `{total, by_operation, by_secret, by_operation_and_secret, by_status}`;
  `DELETE requests` resets them;
* `POST faults` `{secret?, latency_ms, error_rate, error_status, deterministic, seed,
  fail_next, outage, outage_mode, operations}` (see `FaultRule`); `GET faults`;
  `DELETE faults`; `POST reset` clears faults and counters;
* `PUT secrets/<name>` `{"versions": [...]}` replaces a secret's versions (seeding);
* `POST credentials` `{ak, sk, security_token, expires_at?}` adds temporary credentials;
* `GET health`.

State may be persisted to a file (atomically, after every acknowledged write).

The official SDK works against it unchanged (tests/integration/test_csms_emulator_sdk.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import math
import os
import random
import re
import signal
import socket
import ssl
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, Self, TypeVar
from urllib.parse import unquote

import yaml
from aiohttp import web

from dew_csi.csms import signer
from dew_csi.logs import setup_logging
from dew_csi.statefile import write_atomically

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

SYSCURRENT = "SYSCURRENT"
SYSPREVIOUS = "SYSPREVIOUS"
SYSTEM_STAGES = frozenset({SYSCURRENT, SYSPREVIOUS})
NAME_PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,64}")
NAME_PATTERN_WITH_DOT = re.compile(r"[a-zA-Z0-9_.-]{1,64}")
# One doc variant allows a dot in stage names, the SDK docstring does not: accept it.
STAGE_PATTERN = re.compile(r"[a-zA-Z0-9_.-]{1,64}")
ROTATION_PERIOD_PATTERN = re.compile(r"[0-9]{1,5}[dhms]")
SECRET_TYPES = frozenset({"COMMON", "RDS", "RDS-FG", "GaussDB-FG"})
ADMIN_PREFIX = "/_emulator/"
STATE_FORMAT = 1
LatestPolicy = Literal["newest", "syscurrent"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Limits:
    """CSMS limits from the docs (reference csms-api.md §3); smaller values help tests."""

    max_secrets: int = 500
    max_versions: int = 20
    max_stages: int = 12
    max_value_chars: int = 32768
    max_description_bytes: int = 2048
    max_list_limit: int = 1000
    default_list_limit: int = 50
    max_clock_skew: timedelta = signer.MAX_CLOCK_SKEW


class ApiError(Exception):
    """An error answer: HTTP status, `error_code`, `error_msg`. Messages never hold values."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def invalid_parameter(detail: str) -> ApiError:
    return ApiError(400, "CSMS.0002", f"The value of parameter is invalid: {detail}")


def secret_not_found(name: str) -> ApiError:
    return ApiError(400, "CSMS.0106", f"The secret name not found int the db: {name}")


def resource_not_found(detail: str) -> ApiError:
    return ApiError(400, "CSMS.0005", f"The resource does not exist: {detail}")


def auth_failure(detail: str) -> ApiError:
    return ApiError(401, "APIG.0301", f"Incorrect IAM authentication information: {detail}")


API_NOT_FOUND = ApiError(
    404, "APIG.0101", "The API does not exist or has not been published in the environment."
)


# ---- the secret store (pure, synchronous) ------------------------------------------------------


@dataclass
class StoredVersion:
    id: str
    number: int
    create_time: int
    expire_time: int | None = None
    secret_string: str | None = None
    secret_binary: str | None = None  # base64 text, as on the wire


@dataclass
class StoredStage:
    version_id: str
    update_time: int


@dataclass
class StoredSecret:
    id: str
    name: str
    kms_key_id: str
    create_time: int
    update_time: int
    state: str = "ENABLED"
    description: str = ""
    secret_type: str = "COMMON"
    auto_rotation: bool = False
    rotation_period: str | None = None
    rotation_config: str | None = None
    event_subscriptions: list[str] = field(default_factory=list)
    enterprise_project_id: str = "0"
    rotation_func_urn: str | None = None
    versions: dict[str, StoredVersion] = field(default_factory=dict)
    stages: dict[str, StoredStage] = field(default_factory=dict)
    next_number: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "kms_key_id": self.kms_key_id,
            "description": self.description,
            "create_time": self.create_time,
            "update_time": self.update_time,
            "scheduled_delete_time": None,
            "secret_type": self.secret_type,
            "auto_rotation": self.auto_rotation,
            "rotation_period": self.rotation_period,
            "rotation_config": self.rotation_config,
            "rotation_time": 0,
            "next_rotation_time": 0,
            "event_subscriptions": list(self.event_subscriptions),
            "enterprise_project_id": self.enterprise_project_id,
            "rotation_func_urn": self.rotation_func_urn,
        }

    def stages_of(self, version_id: str) -> list[str]:
        return sorted(name for name, stage in self.stages.items() if stage.version_id == version_id)

    def version_metadata(self, version: StoredVersion) -> dict[str, Any]:
        return {
            "id": version.id,
            "create_time": version.create_time,
            "expire_time": version.expire_time,
            "kms_key_id": self.kms_key_id,
            "secret_name": self.name,
            "version_stages": self.stages_of(version.id),
        }

    def stage_json(self, name: str) -> dict[str, Any]:
        stage = self.stages[name]
        return {
            "name": name,
            "update_time": stage.update_time,
            "secret_name": self.name,
            "version_id": stage.version_id,
        }


@dataclass(frozen=True)
class SeedVersion:
    """A version to seed: exactly one of the two values; `stages` None means the default
    movement (the newest becomes SYSCURRENT)."""

    secret_string: str | None = None
    secret_binary: str | None = None
    stages: tuple[str, ...] | None = None


def _version_sort_key(version: StoredVersion) -> int:
    return version.number


class SecretStore:
    """The CSMS data model and its rules. Raises `ApiError`; knows nothing about HTTP."""

    def __init__(
        self,
        *,
        kms_key_id: str,
        limits: Limits,
        clock: Clock,
        allow_dot_in_names: bool = False,
        latest: LatestPolicy = "newest",
    ) -> None:
        self._kms_key_id = kms_key_id
        self._limits = limits
        self._clock = clock
        self._name_pattern = NAME_PATTERN_WITH_DOT if allow_dot_in_names else NAME_PATTERN
        self._latest = latest
        self.secrets: dict[str, StoredSecret] = {}

    def _now(self) -> int:
        return epoch_ms(self._clock())

    def _get(self, name: str) -> StoredSecret:
        secret = self.secrets.get(name)
        if secret is None:
            raise secret_not_found(name)
        return secret

    def _get_enabled(self, name: str) -> StoredSecret:
        secret = self._get(name)
        if secret.state != "ENABLED":
            raise ApiError(
                400,
                "CSMS.0003",
                f"The request is invalid: secret {name} is "
                f"{secret.state}; only ENABLED secrets can be read or changed",
            )
        return secret

    # -- validation helpers --

    def _value_from(self, body: Mapping[str, Any]) -> tuple[str | None, str | None]:
        text, binary = body.get("secret_string"), body.get("secret_binary")
        if (text is None) == (binary is None):
            raise invalid_parameter("exactly one of secret_string and secret_binary is required")
        limit = self._limits.max_value_chars
        if text is not None:
            if not isinstance(text, str):
                raise invalid_parameter("secret_string must be a string")
            if len(text) > limit:
                raise invalid_parameter(f"secret_string is longer than {limit} characters")
            return text, None
        if not isinstance(binary, str):
            raise invalid_parameter("secret_binary must be a base64 string")
        if len(binary) > limit:
            raise invalid_parameter(f"secret_binary is longer than {limit} characters")
        try:
            base64.b64decode(binary, validate=True)
        except (binascii.Error, ValueError):
            raise invalid_parameter("secret_binary is not valid base64") from None
        return None, binary

    def _stages_from(self, raw: object) -> tuple[str, ...] | None:
        if raw is None:
            return None
        if not isinstance(raw, list) or not 1 <= len(raw) <= self._limits.max_stages:
            raise invalid_parameter(
                f"version_stages must be a list of 1 to {self._limits.max_stages} stage names"
            )
        for stage in raw:
            if not isinstance(stage, str) or not STAGE_PATTERN.fullmatch(stage):
                raise invalid_parameter(f"stage names must match {STAGE_PATTERN.pattern}")
        return tuple(dict.fromkeys(raw))

    @staticmethod
    def _optional_ms(body: Mapping[str, Any], key: str) -> int | None:
        value = body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid_parameter(f"{key} must be a non-negative integer (epoch milliseconds)")
        return value

    def _apply_secret_options(self, secret: StoredSecret, body: Mapping[str, Any]) -> None:
        if "description" in body and body["description"] is not None:
            description = body["description"]
            if not isinstance(description, str):
                raise invalid_parameter("description must be a string")
            if len(description.encode("utf-8")) > self._limits.max_description_bytes:
                raise invalid_parameter(
                    f"description is longer than {self._limits.max_description_bytes} bytes"
                )
            secret.description = description
        if body.get("kms_key_id") is not None:
            if not isinstance(body["kms_key_id"], str) or not body["kms_key_id"]:
                raise invalid_parameter("kms_key_id must be a non-empty string")
            secret.kms_key_id = body["kms_key_id"]
        if body.get("auto_rotation") is not None:
            if not isinstance(body["auto_rotation"], bool):
                raise invalid_parameter("auto_rotation must be a boolean")
            secret.auto_rotation = body["auto_rotation"]
        if body.get("rotation_period") is not None:
            period = body["rotation_period"]
            if not isinstance(period, str) or not ROTATION_PERIOD_PATTERN.fullmatch(period):
                raise invalid_parameter("rotation_period must look like 30d, 6h, 90m or 3600s")
            secret.rotation_period = period
        if body.get("event_subscriptions") is not None:
            events = body["event_subscriptions"]
            if not isinstance(events, list) or len(events) > 1:
                raise invalid_parameter("event_subscriptions holds at most one event name")
            if not all(isinstance(event, str) for event in events):
                raise invalid_parameter("event_subscriptions must hold strings")
            secret.event_subscriptions = list(events)
        if body.get("rotation_func_urn") is not None:
            secret.rotation_func_urn = str(body["rotation_func_urn"])
        if secret.auto_rotation and not secret.rotation_period:
            raise invalid_parameter("rotation_period is required when auto_rotation is true")

    # -- stage movement --

    def _check_stage_count(self, secret: StoredSecret, new_stages: Iterable[str]) -> None:
        """Refuse, before changing anything, a change that would leave more than
        `max_stages` labels on the secret (moving SYSCURRENT also creates SYSPREVIOUS)."""
        added = set(new_stages)
        resulting = set(secret.stages) | added
        if SYSCURRENT in added and SYSCURRENT in secret.stages:
            resulting.add(SYSPREVIOUS)
        if len(resulting) > self._limits.max_stages:
            raise ApiError(
                400,
                "CSMS.0203",
                "The number of stage has reached the upper limit: "
                f"a secret has at most {self._limits.max_stages} stages",
            )

    def _assign_stage(self, secret: StoredSecret, stage: str, version_id: str, now: int) -> None:
        """Put a stage label on a version; a label lives on one version only. Moving
        SYSCURRENT leaves SYSPREVIOUS on the version that held it."""
        current = secret.stages.get(stage)
        if current is not None and current.version_id == version_id:
            return
        if stage == SYSCURRENT and current is not None:
            secret.stages[SYSPREVIOUS] = StoredStage(current.version_id, now)
        secret.stages[stage] = StoredStage(version_id, now)

    def _add_version(
        self,
        secret: StoredSecret,
        text: str | None,
        binary: str | None,
        stages: tuple[str, ...] | None,
        expire_time: int | None,
    ) -> StoredVersion:
        now = self._now()
        new_stages = stages if stages is not None else (SYSCURRENT,)
        self._check_stage_count(secret, new_stages)
        version = StoredVersion(
            id=f"v{secret.next_number}",
            number=secret.next_number,
            create_time=now,
            expire_time=expire_time,
            secret_string=text,
            secret_binary=binary,
        )
        secret.next_number += 1
        secret.versions[version.id] = version
        for stage in new_stages:
            self._assign_stage(secret, stage, version.id, now)
        secret.update_time = now
        self._evict_versions(secret)
        return version

    def _evict_versions(self, secret: StoredSecret) -> None:
        """Over the version limit, drop the oldest versions that carry no stage ("deprecated"
        versions, which CSMS removes automatically)."""
        while len(secret.versions) > self._limits.max_versions:
            staged = {stage.version_id for stage in secret.stages.values()}
            candidates = [v for v in secret.versions.values() if v.id not in staged]
            if not candidates:
                return
            oldest = min(candidates, key=_version_sort_key)
            del secret.versions[oldest.id]

    def _resolve_version(self, secret: StoredSecret, version_id: str) -> StoredVersion:
        if version_id == "latest":
            if self._latest == "syscurrent" and SYSCURRENT in secret.stages:
                version_id = secret.stages[SYSCURRENT].version_id
            elif secret.versions:
                return max(secret.versions.values(), key=_version_sort_key)
            else:
                raise resource_not_found(f"secret {secret.name} has no versions")
        version = secret.versions.get(version_id)
        if version is None:
            raise resource_not_found(f"secret {secret.name} has no version {version_id}")
        return version

    @staticmethod
    def _page(
        items: list[Any], key: Callable[[Any], str], limit: int, marker: str | None
    ) -> tuple[list[Any], dict[str, Any]]:
        page = items[:limit]
        more = len(items) > limit
        return page, {
            "next_marker": key(page[-1]) if more and page else None,
            "previous_marker": marker,
            "current_count": len(page),
        }

    def _limit(self, raw: str | None) -> int:
        if raw is None or raw == "":
            return self._limits.default_list_limit
        try:
            limit = int(raw)
        except ValueError:
            raise invalid_parameter("limit must be an integer") from None
        if not 1 <= limit <= self._limits.max_list_limit:
            raise invalid_parameter(f"limit must be between 1 and {self._limits.max_list_limit}")
        return limit

    # -- operations --

    def create_secret(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not self._name_pattern.fullmatch(name):
            raise invalid_parameter(f"name must match ^{self._name_pattern.pattern}$")
        if name in self.secrets:
            raise invalid_parameter(f"a secret named {name} already exists")
        if len(self.secrets) >= self._limits.max_secrets:
            raise ApiError(
                400,
                "CSMS.0202",
                "The number of secret has reached the upper limit: "
                f"at most {self._limits.max_secrets} secrets",
            )
        secret_type = body.get("secret_type") or "COMMON"
        if secret_type not in SECRET_TYPES:
            raise invalid_parameter(f"secret_type must be one of {', '.join(sorted(SECRET_TYPES))}")
        text, binary = self._value_from(body)
        now = self._now()
        secret = StoredSecret(
            id=str(uuid.uuid4()),
            name=name,
            kms_key_id=self._kms_key_id,
            create_time=now,
            update_time=now,
            secret_type=secret_type,
        )
        self._apply_secret_options(secret, body)
        if body.get("enterprise_project_id") is not None:
            secret.enterprise_project_id = str(body["enterprise_project_id"])
        if body.get("rotation_config") is not None:
            secret.rotation_config = str(body["rotation_config"])
        self._add_version(secret, text, binary, None, None)
        self.secrets[name] = secret
        return {"secret": secret.to_json()}

    def show_secret(self, name: str) -> dict[str, Any]:
        return {"secret": self._get(name).to_json()}

    def list_secrets(
        self, limit: str | None, marker: str | None, event_name: str | None
    ) -> dict[str, Any]:
        size = self._limit(limit)
        names = sorted(self.secrets)
        if marker:
            names = [name for name in names if name > marker]
        secrets = [self.secrets[name] for name in names]
        if event_name:
            secrets = [s for s in secrets if event_name in s.event_subscriptions]
        page, info = self._page(secrets, lambda s: s.name, size, marker)
        return {"secrets": [s.to_json() for s in page], "page_info": info}

    def update_secret(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        secret = self._get(name)
        self._apply_secret_options(secret, body)
        secret.update_time = self._now()
        return {"secret": secret.to_json()}

    def delete_secret(self, name: str) -> None:
        self._get(name)
        del self.secrets[name]

    def create_version(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        secret = self._get_enabled(name)
        text, binary = self._value_from(body)
        stages = self._stages_from(body.get("version_stages"))
        expire_time = self._optional_ms(body, "expire_time")
        version = self._add_version(secret, text, binary, stages, expire_time)
        return {"version_metadata": secret.version_metadata(version)}

    def show_version(self, name: str, version_id: str) -> dict[str, Any]:
        secret = self._get_enabled(name)
        version = self._resolve_version(secret, version_id)
        return {
            "version": {
                "version_metadata": secret.version_metadata(version),
                "secret_string": version.secret_string,
                "secret_binary": version.secret_binary,
            }
        }

    def list_versions(self, name: str, limit: str | None, marker: str | None) -> dict[str, Any]:
        secret = self._get(name)
        size = self._limit(limit)
        versions = sorted(secret.versions.values(), key=_version_sort_key)
        if marker:
            match = re.fullmatch(r"v([0-9]+)", marker)
            if match is None:
                raise invalid_parameter("marker must be a version id such as v3")
            versions = [v for v in versions if v.number > int(match.group(1))]
        page, info = self._page(versions, lambda v: v.id, size, marker)
        return {
            "version_metadatas": [secret.version_metadata(v) for v in page],
            "page_info": info,
        }

    def update_version(self, name: str, version_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        secret = self._get(name)
        version = self._resolve_version(secret, version_id)
        version.expire_time = self._optional_ms(body, "expire_time")
        return {"version_metadata": secret.version_metadata(version)}

    def show_stage(self, name: str, stage: str) -> dict[str, Any]:
        secret = self._get(name)
        if stage not in secret.stages:
            raise resource_not_found(f"secret {name} has no stage {stage}")
        return {"stage": secret.stage_json(stage)}

    def update_stage(self, name: str, stage: str, body: Mapping[str, Any]) -> dict[str, Any]:
        secret = self._get(name)
        if not STAGE_PATTERN.fullmatch(stage):
            raise invalid_parameter(f"stage names must match {STAGE_PATTERN.pattern}")
        version_id = body.get("version_id")
        if not isinstance(version_id, str):
            raise invalid_parameter("version_id is required")
        if version_id not in secret.versions:
            raise resource_not_found(f"secret {name} has no version {version_id}")
        self._check_stage_count(secret, [stage])
        self._assign_stage(secret, stage, version_id, self._now())
        return {"stage": secret.stage_json(stage)}

    def delete_stage(self, name: str, stage: str) -> None:
        secret = self._get(name)
        if stage in SYSTEM_STAGES:
            raise ApiError(400, "CSMS.0105", "Can not delete the system internal stage.")
        if stage not in secret.stages:
            raise resource_not_found(f"secret {name} has no stage {stage}")
        del secret.stages[stage]

    def seed(self, name: str, versions: Iterable[SeedVersion]) -> dict[str, Any]:
        """Replace a secret's versions (creating the secret if needed): v1..vN, the stages
        moving as if each version had been added in turn. Names are not checked against the
        API pattern, so tests can reach names the real API would refuse."""
        versions = list(versions)
        if not name or "/" in name:
            raise invalid_parameter("a seeded secret name must be non-empty and have no '/'")
        if not versions:
            raise invalid_parameter("a seeded secret needs at least one version")
        now = self._now()
        old = self.secrets.get(name)
        secret = StoredSecret(
            id=old.id if old else str(uuid.uuid4()),
            name=name,
            kms_key_id=old.kms_key_id if old else self._kms_key_id,
            create_time=old.create_time if old else now,
            update_time=now,
            description=old.description if old else "",
        )
        for spec in versions:
            text, binary = self._value_from(
                {"secret_string": spec.secret_string, "secret_binary": spec.secret_binary}
            )
            self._add_version(secret, text, binary, spec.stages, None)
        self.secrets[name] = secret
        return {"secret": secret.to_json()}

    # -- persistence --

    def to_state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "secrets": [asdict(s) for s in self.secrets.values()]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported state format {state.get('format')!r}")
        secrets: dict[str, StoredSecret] = {}
        for raw in state["secrets"]:
            data = dict(raw)
            data["versions"] = {k: StoredVersion(**v) for k, v in data["versions"].items()}
            data["stages"] = {k: StoredStage(**v) for k, v in data["stages"].items()}
            secret = StoredSecret(**data)
            secrets[secret.name] = secret
        self.secrets = secrets


# ---- fault injection and request counting ------------------------------------------------------


@dataclass
class FaultRule:
    """Misbehaviour for the requests it matches (one secret, or all when set globally).

    `latency` seconds are added first. Then: `outage` fails every request ("unavailable" → 503,
    "reset" → the connection is dropped without an answer); `fail_next` fails that many
    requests; `error_rate` fails that fraction, either evenly spread and starting with a failure
    (`deterministic`) or at random from `seed`. Failures answer `error_status` (429 or 5xx).
    `operations`, when given, limits the rule to those operation names."""

    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    deterministic: bool = False
    seed: int | None = None
    fail_next: int = 0
    outage: bool = False
    outage_mode: Literal["unavailable", "reset"] = "unavailable"
    operations: tuple[str, ...] = ()
    _matched: int = field(default=0, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.error_status != 429 and not 500 <= self.error_status <= 599:
            raise ValueError("error_status must be 429 or a 5xx status")
        if self.latency < 0 or self.fail_next < 0:
            raise ValueError("latency and fail_next cannot be negative")
        if self.outage_mode not in ("unavailable", "reset"):
            raise ValueError("outage_mode is 'unavailable' or 'reset'")
        self._rng = random.Random(self.seed)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultRule:
        allowed = {
            "latency_ms",
            "error_rate",
            "error_status",
            "deterministic",
            "seed",
            "fail_next",
            "outage",
            "outage_mode",
            "operations",
        }
        unknown = set(data) - allowed - {"secret"}
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        return cls(
            latency=float(data.get("latency_ms", 0)) / 1000,
            error_rate=float(data.get("error_rate", 0.0)),
            error_status=int(data.get("error_status", 503)),
            deterministic=bool(data.get("deterministic", False)),
            seed=data.get("seed"),
            fail_next=int(data.get("fail_next", 0)),
            outage=bool(data.get("outage", False)),
            outage_mode=data.get("outage_mode", "unavailable"),
            operations=tuple(data.get("operations") or ()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency * 1000,
            "error_rate": self.error_rate,
            "error_status": self.error_status,
            "deterministic": self.deterministic,
            "seed": self.seed,
            "fail_next": self.fail_next,
            "outage": self.outage,
            "outage_mode": self.outage_mode,
            "operations": list(self.operations),
        }

    def applies_to(self, operation: str) -> bool:
        return not self.operations or operation in self.operations

    def decide_failure(self) -> int | Literal["reset"] | None:
        """Count this request and say how it fails, if it does."""
        if self.outage:
            return "reset" if self.outage_mode == "reset" else 503
        if self.fail_next > 0:
            self.fail_next -= 1
            return self.error_status
        if self.error_rate <= 0:
            return None
        index = self._matched
        self._matched += 1
        if self.deterministic:
            rate = Fraction(self.error_rate).limit_denominator(10_000)
            failed = math.ceil((index + 1) * rate) > math.ceil(index * rate)
        else:
            failed = self._rng.random() < self.error_rate
        return self.error_status if failed else None


@dataclass(frozen=True)
class FaultDecision:
    latency: float = 0.0
    failure: int | Literal["reset"] | None = None


class RequestCounter:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.by_operation: Counter[str] = Counter()
        self.by_secret: Counter[str] = Counter()
        self.by_operation_and_secret: dict[str, Counter[str]] = {}
        self.by_status: Counter[str] = Counter()

    def record(self, operation: str, secret: str | None) -> None:
        self.total += 1
        self.by_operation[operation] += 1
        if secret is not None:
            self.by_secret[secret] += 1
            self.by_operation_and_secret.setdefault(operation, Counter())[secret] += 1

    def record_status(self, status: int | str) -> None:
        self.by_status[str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_operation": dict(self.by_operation),
            "by_secret": dict(self.by_secret),
            "by_operation_and_secret": {
                op: dict(counts) for op, counts in self.by_operation_and_secret.items()
            },
            "by_status": dict(self.by_status),
        }


# ---- routing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    operation: str
    project_id: str
    secret: str | None = None
    version_id: str | None = None
    stage: str | None = None


_ROUTES: dict[tuple[str, int, str | None], str] = {
    # (method, number of segments after the project id, keyword at index 2) -> operation
    ("GET", 1, None): "list_secrets",
    ("POST", 1, None): "create_secret",
    ("GET", 2, None): "show_secret",
    ("PUT", 2, None): "update_secret",
    ("DELETE", 2, None): "delete_secret",
    ("GET", 3, "versions"): "list_secret_versions",
    ("POST", 3, "versions"): "create_secret_version",
    ("GET", 4, "versions"): "show_secret_version",
    ("PUT", 4, "versions"): "update_version",
    ("GET", 4, "stages"): "show_secret_stage",
    ("PUT", 4, "stages"): "update_secret_stage",
    ("DELETE", 4, "stages"): "delete_secret_stage",
}


def resolve_route(method: str, raw_path: str) -> Route:
    parts = [unquote(part) for part in raw_path.split("/")]
    if parts and parts[-1] == "":
        parts.pop()
    # ["", "v1", project, "secrets", ...]
    if len(parts) < 4 or parts[0] != "" or parts[1] != "v1" or parts[3] != "secrets":
        raise API_NOT_FOUND
    project, rest = parts[2], parts[3:]
    keyword = rest[2] if len(rest) >= 3 else None
    operation = _ROUTES.get((method, len(rest), keyword))
    if operation is None:
        raise API_NOT_FOUND
    secret = rest[1] if len(rest) >= 2 else None
    leaf = rest[3] if len(rest) == 4 else None
    return Route(
        operation=operation,
        project_id=project,
        secret=secret,
        version_id=leaf if keyword == "versions" else None,
        stage=leaf if keyword == "stages" else None,
    )


# ---- the HTTP server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TemporaryCredentials:
    ak: str
    sk: str = field(repr=False)
    security_token: str = field(repr=False)
    expires_at: datetime | None = None


def _created_name(route: Route, body: bytes) -> str | None:
    """The secret a create request is about, for the per-secret counters (best effort)."""
    if route.operation != "create_secret":
        return None
    try:
        name = json.loads(body).get("name")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def is_loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def parse_seed_versions(raw: object, where: str) -> list[SeedVersion]:
    """Versions as written in a secrets file or an admin request: a list whose items are a
    string value, or a mapping with `secret_string` or `secret_binary` (base64) and optional
    `version_stages`. Errors name the place, never the value."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: expected a non-empty list of versions")
    versions: list[SeedVersion] = []
    for index, item in enumerate(raw, start=1):
        if isinstance(item, str):
            versions.append(SeedVersion(secret_string=item))
            continue
        if not isinstance(item, dict):
            raise ValueError(f"{where}, version {index}: expected a string or a mapping")
        unknown = set(item) - {"secret_string", "secret_binary", "version_stages"}
        if unknown:
            raise ValueError(f"{where}, version {index}: unknown keys {sorted(unknown)}")
        text, binary = item.get("secret_string"), item.get("secret_binary")
        if (text is None) == (binary is None) or not isinstance(text or binary, str):
            raise ValueError(
                f"{where}, version {index}: give exactly one of secret_string and "
                f"secret_binary, as a string"
            )
        stages = item.get("version_stages")
        if stages is not None and (
            not isinstance(stages, list) or not all(isinstance(s, str) for s in stages)
        ):
            raise ValueError(f"{where}, version {index}: version_stages must be a list of names")
        versions.append(
            SeedVersion(
                secret_string=text,
                secret_binary=binary,
                stages=tuple(stages) if stages is not None else None,
            )
        )
    return versions


async def serve_app(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    """Start `app` on HOST:PORT (port 0: a free one); return the runner and the base URL
    (https when an SSL context is given)."""
    # Stopping waits at most shutdown_timeout for requests in flight (an injected latency).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    scheme = "https" if ssl_context is not None else "http"
    return runner, f"{scheme}://{shown_host}:{sock.getsockname()[1]}"


class CsmsEmulator:
    """The emulator. `await start(host, port)`, use `url`, `await stop()`.

    The Python helpers (`set_secret_versions`, `set_fault`, `request_counts`, ...) are
    thread-safe, so a test may call them while the server runs on another thread's loop."""

    def __init__(
        self,
        *,
        project_id: str,
        ak: str,
        sk: str,
        temporary_credentials: Iterable[TemporaryCredentials] = (),
        state_file: str | os.PathLike[str] | None = None,
        secrets_file: str | os.PathLike[str] | None = None,
        limits: Limits | None = None,
        allow_dot_in_names: bool = False,
        latest: LatestPolicy = "newest",
        clock: Clock = utc_now,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not project_id or not ak or not sk:
            raise ValueError("the CSMS emulator needs a project id, an AK and an SK")
        self.project_id = project_id
        self._ak = ak
        self._sk = sk
        self._temporary = {c.ak: c for c in temporary_credentials}
        self._limits = limits or Limits()
        self._clock = clock
        self._ssl_context = ssl_context
        self._state_file = Path(state_file) if state_file is not None else None
        self._secrets_file = Path(secrets_file) if secrets_file is not None else None
        kms_key_id = uuid.uuid5(uuid.NAMESPACE_URL, f"csms-emulator/{project_id}").hex
        self.store = SecretStore(
            kms_key_id=kms_key_id,
            limits=self._limits,
            clock=clock,
            allow_dot_in_names=allow_dot_in_names,
            latest=latest,
        )
        self.counter = RequestCounter()
        self._faults: dict[str | None, FaultRule] = {}
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._load_initial_state()

    # -- lifecycle --

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the CSMS emulator is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self._url = await serve_app(app, host, port, self._ssl_context)
        log.info("CSMS emulator listening on %s (project %s)", self._url, self.project_id)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- thread-safe helpers for tests and the admin API --

    def set_secret_versions(self, name: str, versions: Iterable[str | bytes | SeedVersion]) -> None:
        """Seed a secret: `str` → secret_string, `bytes` → secret_binary."""
        specs = [
            SeedVersion(secret_string=v)
            if isinstance(v, str)
            else SeedVersion(secret_binary=base64.b64encode(v).decode("ascii"))
            if isinstance(v, bytes)
            else v
            for v in versions
        ]
        with self._lock:
            self.store.seed(name, specs)
            self._persist()

    def set_fault(self, rule: FaultRule, secret: str | None = None) -> None:
        with self._lock:
            self._faults[secret] = rule

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def request_counts(self) -> dict[str, Any]:
        with self._lock:
            return self.counter.snapshot()

    def calls(self, operation: str, secret: str | None = None) -> int:
        """How many requests of `operation` (for `secret`, if given) arrived."""
        with self._lock:
            if secret is None:
                return self.counter.by_operation[operation]
            return self.counter.by_operation_and_secret.get(operation, Counter())[secret]

    def reset_counters(self) -> None:
        with self._lock:
            self.counter.reset()

    def add_temporary_credentials(self, credentials: TemporaryCredentials) -> None:
        with self._lock:
            self._temporary[credentials.ak] = credentials

    # -- state --

    def _load_initial_state(self) -> None:
        if self._state_file is not None and self._state_file.exists():
            try:
                state = json.loads(self._state_file.read_text(encoding="utf-8"))
                self.store.load_state(state)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"cannot restore the CSMS emulator state from {self._state_file}: {exc}"
                ) from None
        if self._secrets_file is not None:
            self._load_secrets_file(self._secrets_file)

    def _load_secrets_file(self, path: Path) -> None:
        """Seed the secrets of a YAML file; secrets already restored from the state file are
        left alone, so a restart never undoes writes made through the API."""
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read the secrets file {path}: {exc}") from None
        if document is None:
            return
        if not isinstance(document, dict):
            raise ValueError(f"{path}: expected a mapping of secret name to list of versions")
        for name, raw_versions in document.items():
            where = f"{path}: secret {name!r}"
            versions = parse_seed_versions(raw_versions, where)
            if str(name) in self.store.secrets:
                continue
            try:
                self.store.seed(str(name), versions)
            except ApiError as exc:
                raise ValueError(f"{where}: {exc.message}") from None
        self._persist()

    def _persist(self) -> None:
        """Called with the lock held, after every acknowledged write."""
        if self._state_file is None:
            return
        data = json.dumps(self.store.to_state(), indent=1, sort_keys=True).encode("utf-8")
        write_atomically(self._state_file, data)

    # -- HTTP --

    def _respond(
        self,
        status: int,
        body: Mapping[str, Any] | None,
        request_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        all_headers = {"X-Request-Id": request_id, **(headers or {})}
        if body is None:
            return web.Response(status=status, headers=all_headers)
        return web.json_response(dict(body), status=status, headers=all_headers)

    def _error(self, error: ApiError, request_id: str) -> web.Response:
        body: dict[str, Any] = {"error_code": error.code, "error_msg": error.message}
        if error.code.startswith("APIG."):
            body["request_id"] = request_id
        return self._respond(error.status, body, request_id)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        request_id = uuid.uuid4().hex
        raw_path = request.rel_url.raw_path
        if raw_path.startswith(ADMIN_PREFIX):
            return await self._handle_admin(request, request_id)
        try:
            route = resolve_route(request.method, raw_path)
        except ApiError as exc:
            with self._lock:
                self.counter.record("unknown", None)
                self.counter.record_status(exc.status)
            return self._error(exc, request_id)
        body = await request.read()
        with self._lock:
            self.counter.record(route.operation, route.secret or _created_name(route, body))
            decision = self._decide_fault(route)
        if decision.latency:
            await asyncio.sleep(decision.latency)
        if decision.failure == "reset":
            with self._lock:
                self.counter.record_status("reset")
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if decision.failure is not None:
            response = self._injected_failure(decision.failure, request_id)
        else:
            response = self._serve(request, route, body, request_id)
        with self._lock:
            self.counter.record_status(response.status)
        return response

    def _decide_fault(self, route: Route) -> FaultDecision:
        """Apply the global rule, then the secret's own: latencies add up, the first failure
        decided wins."""
        latency = 0.0
        failure: int | Literal["reset"] | None = None
        scopes = [None] if route.secret is None else [None, route.secret]
        for scope in scopes:
            rule = self._faults.get(scope)
            if rule is None or not rule.applies_to(route.operation):
                continue
            latency += rule.latency
            if failure is None:
                failure = rule.decide_failure()
        return FaultDecision(latency, failure)

    def _injected_failure(self, status: int, request_id: str) -> web.Response:
        if status == 429:
            error = ApiError(
                429,
                "APIG.0308",
                "The throttling threshold has been reached: policy user over "
                "ratelimit,limit:10,time:1 second",
            )
            return self._error(error, request_id)
        if status == 504:
            return self._error(ApiError(504, "APIG.0203", "Backend timeout."), request_id)
        return self._error(ApiError(status, "APIG.0202", "Backend unavailable."), request_id)

    def _serve(
        self, request: web.Request, route: Route, body: bytes, request_id: str
    ) -> web.Response:
        try:
            self._authenticate(request, route, body)
            payload = self._json_body(request.method, body)
            with self._lock:
                result, status = self._dispatch(request, route, payload)
                if request.method != "GET":
                    self._persist()
        except ApiError as exc:
            return self._error(exc, request_id)
        return self._respond(status, result, request_id)

    @staticmethod
    def _json_body(method: str, body: bytes) -> dict[str, Any]:
        if method in ("GET", "DELETE") or (method == "PUT" and not body.strip()):
            return {}
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "CSMS.0004", "The requested body format is wrong.") from None
        if not isinstance(document, dict):
            raise ApiError(400, "CSMS.0004", "The requested body format is wrong.")
        return document

    def _dispatch(
        self, request: web.Request, route: Route, body: Mapping[str, Any]
    ) -> tuple[dict[str, Any] | None, int]:
        store, name = self.store, route.secret or ""
        query = request.rel_url.query
        match route.operation:
            case "list_secrets":
                return store.list_secrets(
                    query.get("limit"), query.get("marker"), query.get("event_name")
                ), 200
            case "create_secret":
                return store.create_secret(body), 200
            case "show_secret":
                return store.show_secret(name), 200
            case "update_secret":
                return store.update_secret(name, body), 200
            case "delete_secret":
                store.delete_secret(name)
                return None, 204
            case "list_secret_versions":
                return store.list_versions(name, query.get("limit"), query.get("marker")), 200
            case "create_secret_version":
                return store.create_version(name, body), 200
            case "show_secret_version":
                return store.show_version(name, route.version_id or ""), 200
            case "update_version":
                return store.update_version(name, route.version_id or "", body), 200
            case "show_secret_stage":
                return store.show_stage(name, route.stage or ""), 200
            case "update_secret_stage":
                return store.update_stage(name, route.stage or "", body), 200
            case "delete_secret_stage":
                store.delete_stage(name, route.stage or "")
                return None, 204
        raise API_NOT_FOUND

    def _authenticate(self, request: web.Request, route: Route, body: bytes) -> None:
        """Check the SDK-HMAC-SHA256 signature the way the API gateway does."""
        headers = {name.lower(): value for name, value in request.headers.items()}
        value = headers.get("authorization")
        if not value:
            raise auth_failure("the request is not signed (no Authorization header)")
        try:
            authorization = signer.parse_authorization(value)
        except signer.MalformedAuthorization as exc:
            raise auth_failure(f"malformed Authorization header: {exc}") from None
        if authorization.algorithm != signer.ALGORITHM:
            raise auth_failure(f"unsupported signing algorithm {authorization.algorithm}")
        required = {"host", "x-sdk-date"}
        if not required <= set(authorization.signed_headers):
            raise auth_failure("the host and x-sdk-date headers must be signed")
        self._check_date(headers.get("x-sdk-date"))
        secret_key = self._secret_key_for(authorization, headers)
        if not signer.verify_signature(
            method=request.method,
            raw_path=request.rel_url.raw_path,
            raw_query=request.rel_url.raw_query_string,
            headers=headers,
            body=body,
            authorization=authorization,
            secret_key=secret_key,
        ):
            raise auth_failure("verify aksk signature fail")
        header_project = headers.get(signer.HEADER_PROJECT_ID.lower())
        if header_project is not None and header_project != route.project_id:
            raise auth_failure("the X-Project-Id header does not match the project in the path")
        if route.project_id != self.project_id:
            raise auth_failure(f"project {route.project_id} is not accessible with this AK")

    def _check_date(self, value: str | None) -> None:
        if value is None:
            raise auth_failure("the X-Sdk-Date header is missing")
        try:
            sent = signer.parse_sdk_date(value)
        except ValueError:
            raise auth_failure("the X-Sdk-Date header is not in yyyyMMddTHHmmssZ form") from None
        if abs(self._clock() - sent) > self._limits.max_clock_skew:
            raise auth_failure(
                "the X-Sdk-Date is more than 15 minutes away from the server time (signature "
                "expired); check the client clock"
            )

    def _secret_key_for(self, authorization: signer.Authorization, headers: dict[str, str]) -> str:
        token = headers.get(signer.HEADER_SECURITY_TOKEN.lower())
        if authorization.access_key == self._ak:
            if token is not None:
                raise auth_failure("a security token was sent with a permanent access key")
            return self._sk
        with self._lock:
            temporary = self._temporary.get(authorization.access_key)
        if temporary is None:
            raise auth_failure(
                f"Get secretKey failed,ak:{authorization.access_key},err:ak not exist"
            )
        if token is None:
            raise auth_failure("temporary access key used without its X-Security-Token")
        if "x-security-token" not in authorization.signed_headers:
            raise auth_failure("the X-Security-Token header must be signed")
        if not hmac.compare_digest(token.encode(), temporary.security_token.encode()):
            raise auth_failure("the security token does not belong to this access key")
        if temporary.expires_at is not None and temporary.expires_at <= self._clock():
            raise auth_failure("the security token has expired")
        return temporary.sk

    # -- admin API --

    async def _handle_admin(self, request: web.Request, request_id: str) -> web.Response:
        if not is_loopback(request.remote):
            return self._respond(403, {"error": "the admin API is loopback only"}, request_id)
        path = request.rel_url.raw_path[len(ADMIN_PREFIX) :]
        parts = [unquote(part) for part in path.split("/")]
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return self._respond(400, {"error": "the body is not JSON"}, request_id)
        try:
            result = self._admin(request.method, parts, body)
        except (ValueError, TypeError, ApiError) as exc:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            return self._respond(400, {"error": message}, request_id)
        if result is None:
            return self._respond(404, {"error": "no such admin endpoint"}, request_id)
        return self._respond(200, result, request_id)

    def _admin(self, method: str, parts: list[str], body: Any) -> dict[str, Any] | None:
        match method, parts:
            case "GET", ["health"]:
                return {"status": "ok", "project_id": self.project_id}
            case "GET", ["requests"]:
                return self.request_counts()
            case "DELETE", ["requests"]:
                self.reset_counters()
                return {}
            case "GET", ["faults"]:
                with self._lock:
                    return {"faults": {k or "*": r.to_json() for k, r in self._faults.items()}}
            case "POST", ["faults"]:
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object")
                self.set_fault(FaultRule.from_json(body), body.get("secret"))
                return {}
            case "DELETE", ["faults"]:
                self.clear_faults()
                return {}
            case "POST", ["reset"]:
                with self._lock:
                    self._faults.clear()
                    self.counter.reset()
                return {}
            case "PUT", ["secrets", name]:
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object with 'versions'")
                versions = parse_seed_versions(body.get("versions"), f"secret {name!r}")
                with self._lock:
                    result = self.store.seed(name, versions)
                    self._persist()
                return result
            case "POST", ["credentials"]:
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object")
                expires = body.get("expires_at")
                self.add_temporary_credentials(
                    TemporaryCredentials(
                        ak=str(body["ak"]),
                        sk=str(body["sk"]),
                        security_token=str(body["security_token"]),
                        expires_at=datetime.fromtimestamp(float(expires), UTC)
                        if expires is not None
                        else None,
                    )
                )
                return {}
        return None


# ---- running it in a thread, and from the command line -----------------------------------------


class AsyncServer(Protocol):
    async def start(self, host: str, port: int) -> None: ...
    async def stop(self) -> None: ...
    @property
    def url(self) -> str: ...


ServerT = TypeVar("ServerT", bound=AsyncServer)


class ServerThread(Generic[ServerT]):
    """Run an async server on its own event loop in a daemon thread. `start()` returns once it
    listens (or raises what start raised). Tests on their own loop then talk to it over real
    sockets, so a blocking call in the code under test shows up as a hang, not a pass."""

    def __init__(self, server: ServerT, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._run, name=type(self.server).__name__, daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.server.start(self._host, self._port))
        except BaseException as exc:  # handed to the thread that called start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class CsmsEmulatorThread(ServerThread[CsmsEmulator]):
    """`with CsmsEmulatorThread(project_id=..., ak=..., sk=...) as csms: csms.url`"""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        super().__init__(CsmsEmulator(**options), host, port)

    @property
    def emulator(self) -> CsmsEmulator:
        return self.server


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen expects HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve_until_signalled(emulator: CsmsEmulator, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await emulator.start(host, port)
    print(f"dew-csi csms-emulator listening on {emulator.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await emulator.stop()


def run_from_args(args: argparse.Namespace) -> int:
    """`dew-csi csms-emulator`: serve until SIGTERM or SIGINT, then exit 0."""
    setup_logging("text", level=logging.INFO)
    try:
        host, port = parse_listen(args.listen)
        emulator = CsmsEmulator(
            project_id=args.project_id,
            ak=args.ak,
            sk=args.sk,
            state_file=args.state,
            secrets_file=args.secrets,
        )
    except ValueError as exc:
        print(f"dew-csi csms-emulator: {exc}", file=sys.stderr, flush=True)
        return 2
    asyncio.run(_serve_until_signalled(emulator, host, port))
    return 0
