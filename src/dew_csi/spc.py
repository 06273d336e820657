"""SecretProviderClass parameters: models, parsing and validation.

Pure functions over plain data, shared by the provider (which validates on every mount) and the
admission webhook (which validates at `kubectl apply` time), so both enforce the same rules
(DESIGN.md section 2.1; add-on guide Tables 2 to 4).

Every problem raises `SpcValidationError`: a one-sentence message naming the SecretProviderClass,
the object and the rule, plus a short `rule` code. Checks run in document order, so the first
problem reported is always the same one. Messages quote names, keys and the short enumerated
settings (provider, objectType, objectVersion, filePermission) only; the objects YAML holds
secret names, never secret values, but a message never echoes YAML text beyond that. Quoted
names have control characters and lone surrogates escaped (`logs.quote`), so a message is always
one printable line that gRPC, an Event and a log can carry.

`parameters.objects` is bounded, so that no SecretProviderClass can stall the components that
parse it (the provider on every mount, the webhook, the driver). In this order, and before any
YAML is built:
1. its size: at most `MAX_OBJECTS_BYTES` bytes of UTF-8, checked before any parsing;
2. a bounded scan of the YAML events (libyaml's parser when PyYAML has it, which it does in the
   official wheels): at most `MAX_OBJECTS` list entries and at most `MAX_YAML_NODES` values once
   aliases are expanded (so a small "billion laughs" document of nested aliases is refused
   after a few events), and no alias inside the node it names. The scan stops at the first
   event past a bound, so refusing costs little whatever the document holds.
Only then is the YAML loaded (with libyaml too) and validated.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, NoReturn

import yaml
import yaml.constructor
import yaml.events
import yaml.nodes
import yaml.reader

from dew_csi.logs import quote

PROVIDER = "cce"
OBJECT_TYPE_CSMS = "csms"
LATEST_VERSION = "latest"

OBJECT_KEYS = (
    "objectName",
    "objectAlias",
    "objectType",
    "objectVersion",
    "jmesPath",
    "filePermission",
)
JMES_PATH_KEYS = ("path", "objectAlias")

# Bounds on parameters.objects (README "Limits"). A real SecretProviderClass is a few hundred
# bytes to a few KiB. 500 objects is every secret a CSMS project can hold (its quota), and object
# names are unique within a class, so no working class lists more; 256 KiB is 500 objects of
# about 500 bytes each, alias, filePermission and jmesPath entries included; 20000 values is 500
# objects with seven jmesPath entries each. The API server would take 1.5 MiB.
MAX_OBJECTS_BYTES: Final = 256 * 1024
MAX_OBJECTS: Final = 500
MAX_YAML_NODES: Final = 20_000
# CSMS's own rule for secret names (reference/csms-api.md; the console also allows ".").
OBJECT_NAME_RULE: Final = "1 to 64 letters, digits, '.', '_' or '-'"
_OBJECT_NAME = re.compile(r"[a-zA-Z0-9._-]{1,64}")

_VERSION_ID = re.compile(r"v[0-9]+")
_OCTAL_MODE = re.compile(r"[0-7]{1,4}")
_MAX_FILE_MODE = 0o777
# Linux NAME_MAX; the upstream driver rejects longer path components too.
_MAX_FILE_NAME_BYTES = 255
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_DNS_SUBDOMAIN_MAX = 253
_SECRET_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_SECRET_DATA_KEY_MAX = 253
_QUOTE_MAX = 64
_YAML_PROBLEM_MAX = 100
_LISTED_NAMES_MAX = 20

# Raises the SpcValidationError for one object or secretObjects entry.
_Fail = Callable[["Rule", str], NoReturn]


class Rule(StrEnum):
    """Short codes for every validation rule (`SpcValidationError.rule`)."""

    SPC_INVALID = "spc-invalid"
    NAME_MISSING = "name-missing"
    PROVIDER_UNSUPPORTED = "provider-unsupported"
    OBJECTS_MISSING = "objects-missing"
    OBJECTS_NOT_STRING = "objects-not-string"
    OBJECTS_TOO_LARGE = "objects-too-large"
    TOO_MANY_OBJECTS = "too-many-objects"
    OBJECTS_TOO_COMPLEX = "objects-too-complex"
    OBJECTS_YAML = "objects-yaml"
    OBJECTS_NOT_LIST = "objects-not-list"
    OBJECTS_EMPTY = "objects-empty"
    OBJECT_NOT_MAPPING = "object-not-mapping"
    UNKNOWN_KEY = "unknown-key"
    OBJECT_NAME_REQUIRED = "object-name-required"
    OBJECT_NAME_INVALID = "object-name-invalid"
    OBJECT_TYPE_REQUIRED = "object-type-required"
    OBJECT_TYPE_UNSUPPORTED = "object-type-unsupported"
    OBJECT_VERSION_REQUIRED = "object-version-required"
    OBJECT_VERSION_INVALID = "object-version-invalid"
    OBJECT_ALIAS_INVALID = "object-alias-invalid"
    JMES_PATH_INVALID = "jmes-path-invalid"
    JMES_PATH_ENTRY_INVALID = "jmes-path-entry-invalid"
    JMES_PATH_PATH_REQUIRED = "jmes-path-path-required"
    JMES_PATH_BACKSLASH = "jmes-path-backslash"
    JMES_PATH_ALIAS_REQUIRED = "jmes-path-alias-required"
    FILE_PERMISSION_INVALID = "file-permission-invalid"
    DUPLICATE_OBJECT_NAME = "duplicate-object-name"
    ALIAS_EQUALS_OBJECT_NAME = "alias-equals-object-name"
    DUPLICATE_FILE_NAME = "duplicate-file-name"
    UNSAFE_FILE_NAME = "unsafe-file-name"
    SECRET_OBJECTS_INVALID = "secret-objects-invalid"
    SECRET_OBJECT_INVALID = "secret-object-invalid"
    SECRET_NAME_REQUIRED = "secret-name-required"
    SECRET_NAME_INVALID = "secret-name-invalid"
    DUPLICATE_SECRET_NAME = "duplicate-secret-name"
    SECRET_TYPE_REQUIRED = "secret-type-required"
    SECRET_METADATA_INVALID = "secret-metadata-invalid"
    SECRET_DATA_REQUIRED = "secret-data-required"
    SECRET_DATA_ENTRY_INVALID = "secret-data-entry-invalid"
    SECRET_DATA_KEY_INVALID = "secret-data-key-invalid"
    DUPLICATE_SECRET_DATA_KEY = "duplicate-secret-data-key"
    SECRET_DATA_UNKNOWN_FILE = "secret-data-unknown-file"


class SpcValidationError(ValueError):
    """A SecretProviderClass breaks a rule; str() is one sentence a user can act on.

    `object_name` is the parameters.objects entry at fault (its objectName, or None when the
    entry has no usable objectName, or the problem is not about one object);
    `secret_object` is the spec.secretObjects entry at fault (its secretName), if any.
    """

    def __init__(
        self,
        spc_name: str,
        rule: Rule,
        message: str,
        *,
        object_name: str | None = None,
        secret_object: str | None = None,
    ) -> None:
        super().__init__(message)
        self.spc_name = spc_name
        self.rule = rule
        self.object_name = object_name
        self.secret_object = secret_object


# ------------------------------------------------------------------------------ models


@dataclass(frozen=True, slots=True)
class JmesPathEntry:
    """One value extracted from a JSON secret into its own file."""

    path: str
    object_alias: str


@dataclass(frozen=True, slots=True)
class SecretObject:
    """One entry of `parameters.objects`: a CSMS secret to mount."""

    object_name: str
    object_type: str
    object_version: str
    object_alias: str | None = None
    jmes_path: tuple[JmesPathEntry, ...] = ()
    file_permission: int | None = None

    @property
    def file_name(self) -> str:
        """The file holding the whole secret: objectAlias, else objectName."""
        return self.object_alias if self.object_alias is not None else self.object_name

    @property
    def file_names(self) -> tuple[str, ...]:
        """Every file this object produces: the whole secret, then each jmesPath alias."""
        return (self.file_name, *(entry.object_alias for entry in self.jmes_path))

    @property
    def is_latest(self) -> bool:
        """Only `latest` objects are re-read on rotation; a pinned version never changes."""
        return self.object_version == LATEST_VERSION


@dataclass(frozen=True, slots=True)
class SyncedSecretData:
    """`secretObjects[].data[]`: Secret key `key` gets the content of mounted file `object_name`."""

    object_name: str
    key: str


@dataclass(frozen=True, slots=True)
class SyncedSecret:
    """One `spec.secretObjects` entry: a Kubernetes Secret kept in sync with mounted files."""

    secret_name: str
    type: str
    data: tuple[SyncedSecretData, ...]
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)


@dataclass(frozen=True, slots=True)
class ParsedSpc:
    """A validated SecretProviderClass of provider `cce`."""

    name: str
    namespace: str | None
    provider: str
    objects: tuple[SecretObject, ...]
    secret_objects: tuple[SyncedSecret, ...] = ()

    @property
    def mounted_file_names(self) -> frozenset[str]:
        return frozenset(name for obj in self.objects for name in obj.file_names)


# ------------------------------------------------------------------------- public API


def is_ours(spc: object) -> bool:
    """True when the SecretProviderClass names our provider; callers ignore all others."""
    if not isinstance(spc, Mapping):
        return False
    spec = spc.get("spec")
    return isinstance(spec, Mapping) and spec.get("provider") == PROVIDER


def validate_spc(spc: Mapping[str, Any]) -> ParsedSpc:
    """Validate a whole SecretProviderClass as read from the API and return its models."""
    candidate: object = spc  # callers may hand over whatever the API or a file held
    if not isinstance(candidate, Mapping):
        raise SpcValidationError(
            "",
            Rule.SPC_INVALID,
            f"SecretProviderClass <unnamed>: expected an object, got {_kind(candidate)}",
        )
    metadata = spc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise SpcValidationError(
            "", Rule.NAME_MISSING, "SecretProviderClass <unnamed>: metadata.name is missing"
        )
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    report = _Reporter(name)

    spec = spc.get("spec")
    if not isinstance(spec, Mapping):
        report.fail(Rule.SPC_INVALID, None, f"spec must be a mapping, not {_kind(spec)}")
    provider = spec.get("provider")
    if provider != PROVIDER:
        shown = "missing" if provider is None else _show(provider)
        report.fail(
            Rule.PROVIDER_UNSUPPORTED,
            None,
            f'spec.provider is {shown}, but this provider only serves provider "{PROVIDER}"',
        )
    parameters = spec.get("parameters")
    objects_yaml = parameters.get("objects") if isinstance(parameters, Mapping) else None
    if objects_yaml is None:
        report.fail(
            Rule.OBJECTS_MISSING,
            None,
            "spec.parameters.objects is missing; it must list the CSMS secrets to mount",
        )
    if not isinstance(objects_yaml, str):
        report.fail(
            Rule.OBJECTS_NOT_STRING,
            None,
            "spec.parameters.objects must be a string holding a YAML list, "
            f"not {_kind(objects_yaml)}",
        )
    objects = _parse_objects(report, objects_yaml)
    secret_objects = _parse_secret_objects(report, spec.get("secretObjects"), objects)
    return ParsedSpc(
        name=name,
        namespace=namespace if isinstance(namespace, str) else None,
        provider=PROVIDER,
        objects=objects,
        secret_objects=secret_objects,
    )


def parse_objects(spc_name: str, objects_yaml: str) -> tuple[SecretObject, ...]:
    """Parse and validate `parameters.objects` (a YAML list) of the named SecretProviderClass."""
    report = _Reporter(spc_name)
    candidate: object = objects_yaml  # the provider takes it from request JSON
    if not isinstance(candidate, str):
        report.fail(
            Rule.OBJECTS_NOT_STRING,
            None,
            f"parameters.objects must be a string holding a YAML list, not {_kind(candidate)}",
        )
    return _parse_objects(report, candidate)


def check_objects_size(spc_name: str, objects_yaml: str) -> None:
    """Raise `SpcValidationError` when `parameters.objects` is over `MAX_OBJECTS_BYTES`.

    Costs at most one UTF-8 encoding of a string under the bound; parse_objects and validate_spc
    check it first too, so callers need this only to refuse before other work (hashing)."""
    _check_size(_Reporter(spc_name), objects_yaml)


def yaml_uses_libyaml() -> bool:
    """True when parsing runs in libyaml (C), as with PyYAML's official wheels."""
    return _CParser is not None


# ----------------------------------------------------------------------- reporting


class _Reporter:
    """Builds the one-sentence errors for one SecretProviderClass."""

    def __init__(self, spc_name: str) -> None:
        self.spc_name = spc_name
        self.prefix = f"SecretProviderClass {_quote(spc_name)}"

    def fail(
        self,
        rule: Rule,
        subject: str | None,
        problem: str,
        *,
        object_name: str | None = None,
        secret_object: str | None = None,
    ) -> NoReturn:
        parts = [self.prefix, subject, problem] if subject else [self.prefix, problem]
        raise SpcValidationError(
            self.spc_name,
            rule,
            ": ".join(parts),
            object_name=object_name,
            secret_object=secret_object,
        )


def _quote(text: str) -> str:
    """A name in double quotes, control characters escaped, cut short when very long."""
    shown = text if len(text) <= _QUOTE_MAX else text[: _QUOTE_MAX - 1] + "…"
    return quote(shown)


def _show(value: object) -> str:
    """A short enumerated setting as written, or its kind when it is not a string."""
    return _quote(value) if isinstance(value, str) else _kind(value)


def _kind(value: object) -> str:
    """What a YAML/JSON value is, in the user's terms, without showing it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, set | frozenset):
        return "a set"
    return f"a {type(value).__name__}"


def _key_text(key: object) -> str:
    return _quote(key) if isinstance(key, str) else _kind(key)


def _name_list(names: Iterable[str]) -> str:
    ordered = sorted(names)
    shown = ", ".join(_quote(n) for n in ordered[:_LISTED_NAMES_MAX])
    return shown + (", …" if len(ordered) > _LISTED_NAMES_MAX else "")


def _quote_hint(value: object) -> str:
    # YAML turns unquoted 123, true or 2024-01-01 into non-strings.
    scalar = isinstance(value, bool | int | float | datetime.date)
    return " (quote the value in the YAML)" if scalar else ""


def _not_kind(value: object) -> str:
    """', not <kind>' for a present value of the wrong kind, else nothing."""
    if value is None or value == "":
        return ""
    return f", not {_kind(value)}{_quote_hint(value)}"


# ------------------------------------------------------------------------ YAML loading


# libyaml's parser and composer when PyYAML was built with it (the official wheels are): about
# 5 times faster than the pure-Python ones (benchmarks/hostile_spc.py prints both).
_CParser: type[Any] | None = getattr(yaml, "CSafeLoader", None)
_SafeLoader: type[yaml.SafeLoader] = _CParser if _CParser is not None else yaml.SafeLoader


class _ObjectsLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(
        self, node: yaml.nodes.MappingNode, deep: bool = False
    ) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                break  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {_key_text(key)}",
                    key_node.start_mark,
                )
        mapping: dict[Hashable, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _check_size(report: _Reporter, text: str) -> bytes:
    """The UTF-8 of `text`, or the size error; refuses by length alone when that suffices."""
    encoded = b""
    if len(text) <= MAX_OBJECTS_BYTES:  # else over the bound whatever it encodes to
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError as error:
            report.fail(
                Rule.OBJECTS_YAML,
                None,
                "parameters.objects is not valid YAML: it contains a character YAML does not "
                f"allow (at character {error.start + 1})",
            )
    if encoded or not text:
        if len(encoded) <= MAX_OBJECTS_BYTES:
            return encoded
        size = f" ({len(encoded)} bytes)"
    else:
        size = ""  # refused by its length: not worth encoding to say how far over it is
    report.fail(
        Rule.OBJECTS_TOO_LARGE,
        None,
        f"parameters.objects is larger than the limit of {MAX_OBJECTS_BYTES // 1024} KiB"
        f"{size}; split the objects over several SecretProviderClass objects",
    )


_STARTS: Final = (yaml.events.SequenceStartEvent, yaml.events.MappingStartEvent)
_ENDS: Final = (yaml.events.SequenceEndEvent, yaml.events.MappingEndEvent)


def _scan(report: _Reporter, document: bytes) -> None:
    """Walk the YAML events within the bounds (MAX_OBJECTS, MAX_YAML_NODES, no recursive alias),
    building nothing; stop at the first event past a bound. Syntax errors raise as in loading."""
    loader: Any = _SafeLoader(document)  # the event API (get_event) has no type hints
    try:
        values = 0  # scalars and collections so far, each alias counted as what it names
        entries = 0  # entries of a top-level list
        root_is_list = False
        open_nodes: list[tuple[str | None, int]] = []  # (anchor, values before it)
        open_anchors: set[str] = set()
        sizes: dict[str, int] = {}  # anchor -> values it stands for
        while not loader.check_event(yaml.events.StreamEndEvent):
            event = loader.get_event()
            depth = len(open_nodes)
            if isinstance(event, yaml.events.ScalarEvent):
                values += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.events.AliasEvent):
                anchor = event.anchor or ""
                if anchor in open_anchors:
                    mark = event.start_mark
                    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
                    report.fail(
                        Rule.OBJECTS_YAML,
                        None,
                        f"parameters.objects is not valid YAML: an alias is inside the node it "
                        f"names{at}",
                    )
                values += sizes.get(anchor, 1)  # an unknown one: loading reports it
            elif isinstance(event, _STARTS):
                if depth == 0:
                    root_is_list = isinstance(event, yaml.events.SequenceStartEvent)
                values += 1
                open_nodes.append((event.anchor, values - 1))
                if event.anchor is not None:
                    open_anchors.add(event.anchor)
            elif isinstance(event, _ENDS):
                closed, before = open_nodes.pop()
                if closed is not None:
                    sizes[closed] = values - before
                    open_anchors.discard(closed)
                continue
            else:
                continue  # stream and document boundaries
            if depth == 1 and root_is_list:
                entries += 1
                if entries > MAX_OBJECTS:
                    report.fail(
                        Rule.TOO_MANY_OBJECTS,
                        None,
                        f"parameters.objects lists more than {MAX_OBJECTS} objects, the limit; "
                        "split them over several SecretProviderClass objects",
                    )
            if values > MAX_YAML_NODES:
                report.fail(
                    Rule.OBJECTS_TOO_COMPLEX,
                    None,
                    f"parameters.objects holds more than {MAX_YAML_NODES} YAML values once its "
                    "aliases are expanded, the limit; list the objects without nesting aliases "
                    "or split them over several SecretProviderClass objects",
                )
    finally:
        loader.dispose()


def _load_yaml(report: _Reporter, text: str) -> object:
    invalid = "parameters.objects is not valid YAML"
    document = _check_size(report, text)
    try:
        _scan(report, document)
        # _ObjectsLoader is a SafeLoader: plain data only, no Python object construction.
        return yaml.load(document, Loader=_ObjectsLoader)
    except SpcValidationError:
        raise  # a bound the scan enforced (a ValueError, so before the handler below)
    except yaml.MarkedYAMLError as exc:
        # PyYAML's own str() quotes the offending lines; keep only its short problem text.
        problem = " ".join((exc.problem or exc.context or "syntax error").split())
        if len(problem) > _YAML_PROBLEM_MAX:
            problem = problem[: _YAML_PROBLEM_MAX - 1] + "…"
        mark = exc.problem_mark or exc.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        report.fail(Rule.OBJECTS_YAML, None, f"{invalid}: {problem}{at}")
    except yaml.reader.ReaderError as exc:
        report.fail(
            Rule.OBJECTS_YAML,
            None,
            f"{invalid}: it contains a character YAML does not allow "
            f"(at character {exc.position + 1})",
        )
    except yaml.YAMLError:
        report.fail(Rule.OBJECTS_YAML, None, invalid)
    except RecursionError:
        report.fail(Rule.OBJECTS_YAML, None, f"{invalid}: it is nested too deeply")
    except (ValueError, TypeError, OverflowError):
        # Tagged or date-like scalars that do not convert (e.g. 2024-13-01, !!int x). The
        # exception text would quote the value, so it is left out.
        report.fail(
            Rule.OBJECTS_YAML,
            None,
            f"{invalid}: a date or explicitly tagged value cannot be converted",
        )


# ------------------------------------------------------------------ parameters.objects


def _parse_objects(report: _Reporter, objects_yaml: str) -> tuple[SecretObject, ...]:
    document = _load_yaml(report, objects_yaml)
    if document is None:
        report.fail(
            Rule.OBJECTS_EMPTY,
            None,
            "parameters.objects lists no objects; at least one CSMS secret is required",
        )
    if not isinstance(document, list):
        report.fail(
            Rule.OBJECTS_NOT_LIST,
            None,
            f"parameters.objects must be a YAML list of objects, not {_kind(document)}",
        )
    if not document:
        report.fail(
            Rule.OBJECTS_EMPTY,
            None,
            "parameters.objects lists no objects; at least one CSMS secret is required",
        )
    names = _NameRegistry(report)
    parsed: list[SecretObject] = []
    for position, entry in enumerate(document, start=1):
        secret_object = _parse_object(report, position, entry)
        names.register(secret_object)
        parsed.append(secret_object)
    return tuple(parsed)


def _parse_object(report: _Reporter, position: int, entry: object) -> SecretObject:
    if not isinstance(entry, Mapping):
        report.fail(
            Rule.OBJECT_NOT_MAPPING,
            f"object #{position}",
            f"must be a mapping with objectName, objectType and objectVersion, not {_kind(entry)}",
        )
    raw_name = entry.get("objectName")
    usable_name = raw_name if isinstance(raw_name, str) and raw_name else None
    subject = f"object {_quote(usable_name)}" if usable_name else f"object #{position}"

    def fail(rule: Rule, problem: str) -> NoReturn:
        report.fail(rule, subject, problem, object_name=usable_name)

    # Unknown keys first: a misspelt "objectname" explains a missing objectName best.
    for key in entry:
        if key not in OBJECT_KEYS:
            fail(
                Rule.UNKNOWN_KEY,
                f"unknown key {_key_text(key)}; allowed keys are {', '.join(OBJECT_KEYS)}",
            )

    if raw_name is None or raw_name == "":
        fail(Rule.OBJECT_NAME_REQUIRED, "objectName is required (the CSMS secret name)")
    if not isinstance(raw_name, str):
        fail(
            Rule.OBJECT_NAME_INVALID,
            f"objectName must be a string, not {_kind(raw_name)}{_quote_hint(raw_name)}",
        )
    name = raw_name
    if not _OBJECT_NAME.fullmatch(name):
        fail(
            Rule.OBJECT_NAME_INVALID,
            f"objectName must be a CSMS secret name: {OBJECT_NAME_RULE}",
        )

    object_type = entry.get("objectType")
    if object_type is None or object_type == "":
        fail(
            Rule.OBJECT_TYPE_REQUIRED,
            f'objectType is required; the only supported objectType is "{OBJECT_TYPE_CSMS}"',
        )
    if not isinstance(object_type, str):
        fail(
            Rule.OBJECT_TYPE_UNSUPPORTED,
            f'objectType must be the string "{OBJECT_TYPE_CSMS}"{_not_kind(object_type)}',
        )
    if object_type != OBJECT_TYPE_CSMS:
        fail(
            Rule.OBJECT_TYPE_UNSUPPORTED,
            f"objectType {_quote(object_type)} is not supported; "
            f'the only supported objectType is "{OBJECT_TYPE_CSMS}"',
        )

    version = entry.get("objectVersion")
    if version is None or version == "":
        fail(
            Rule.OBJECT_VERSION_REQUIRED,
            'objectVersion is required: "latest" or a CSMS version id such as "v1"',
        )
    if not isinstance(version, str):
        fail(
            Rule.OBJECT_VERSION_INVALID,
            f'objectVersion must be a string: "latest" or a CSMS version id such as "v1"'
            f"{_not_kind(version)}",
        )
    if version != LATEST_VERSION and not _VERSION_ID.fullmatch(version):
        fail(
            Rule.OBJECT_VERSION_INVALID,
            f"objectVersion {_quote(version)} is not valid; "
            'use "latest" or a CSMS version id such as "v1"',
        )

    alias: str | None = None
    if "objectAlias" in entry:
        raw_alias = entry["objectAlias"]
        if raw_alias == "":
            fail(
                Rule.OBJECT_ALIAS_INVALID,
                "objectAlias must not be empty; leave it out to name the file after objectName",
            )
        if not isinstance(raw_alias, str):
            fail(
                Rule.OBJECT_ALIAS_INVALID,
                f"objectAlias must be a string, the file name{_not_kind(raw_alias)}",
            )
        alias = raw_alias

    jmes_path: tuple[JmesPathEntry, ...] = ()
    if "jmesPath" in entry:
        jmes_path = _parse_jmes_path(entry["jmesPath"], fail)

    file_permission: int | None = None
    if "filePermission" in entry:
        file_permission = _parse_file_permission(entry["filePermission"], fail)

    return SecretObject(
        object_name=name,
        object_type=OBJECT_TYPE_CSMS,
        object_version=version,
        object_alias=alias,
        jmes_path=jmes_path,
        file_permission=file_permission,
    )


def _parse_jmes_path(raw: object, fail: _Fail) -> tuple[JmesPathEntry, ...]:
    if not isinstance(raw, list) or not raw:
        shown = "an empty list" if isinstance(raw, list) else _kind(raw)
        fail(
            Rule.JMES_PATH_INVALID,
            f"jmesPath must be a non-empty list of {{path, objectAlias}} mappings, not {shown}",
        )
    entries: list[JmesPathEntry] = []
    for position, item in enumerate(raw, start=1):
        where = f"jmesPath entry #{position}"
        if not isinstance(item, Mapping):
            fail(
                Rule.JMES_PATH_ENTRY_INVALID,
                f"{where} must be a mapping with path and objectAlias, not {_kind(item)}",
            )
        for key in item:
            if key not in JMES_PATH_KEYS:
                fail(
                    Rule.UNKNOWN_KEY,
                    f"{where} has unknown key {_key_text(key)}; "
                    f"allowed keys are {', '.join(JMES_PATH_KEYS)}",
                )
        path = item.get("path")
        if not isinstance(path, str) or not path:
            fail(
                Rule.JMES_PATH_PATH_REQUIRED,
                f"{where} needs path, the key to extract, as a non-empty string{_not_kind(path)}",
            )
        if "\\" in path:
            fail(Rule.JMES_PATH_BACKSLASH, f"{where}: path must not contain a backslash (\\)")
        alias = item.get("objectAlias")
        if not isinstance(alias, str) or not alias:
            fail(
                Rule.JMES_PATH_ALIAS_REQUIRED,
                f"{where} needs objectAlias, the file name, as a non-empty string"
                f"{_not_kind(alias)}",
            )
        entries.append(JmesPathEntry(path=path, object_alias=alias))
    return tuple(entries)


def _parse_file_permission(raw: object, fail: _Fail) -> int:
    if not isinstance(raw, str):
        # Unquoted, YAML reads 0600 as octal 384 but 644 as decimal 644: refuse to guess.
        fail(
            Rule.FILE_PERMISSION_INVALID,
            f'filePermission must be a quoted octal string such as "0644"{_not_kind(raw)}',
        )
    if _OCTAL_MODE.fullmatch(raw):
        mode = int(raw, 8)
        if mode <= _MAX_FILE_MODE:
            return mode
    fail(
        Rule.FILE_PERMISSION_INVALID,
        f"filePermission {_quote(raw)} is not valid; "
        'use an octal string from "0000" to "0777", such as "0644"',
    )


class _NameRegistry:
    """Enforces that objectNames, objectAliases and jmesPath aliases are all distinct.

    Objects are registered in document order and each is checked against everything before
    it and against itself, so every clashing pair is caught at its second member.
    """

    def __init__(self, report: _Reporter) -> None:
        self.report = report
        # name -> (is it an objectName, how it is used: 'the objectAlias of object "a"')
        self.used: dict[str, tuple[bool, str]] = {}

    def register(self, obj: SecretObject) -> None:
        quoted_name = _quote(obj.object_name)

        def fail(rule: Rule, problem: str) -> NoReturn:
            self.report.fail(rule, f"object {quoted_name}", problem, object_name=obj.object_name)

        if obj.object_name in self.used:
            is_object_name, usage = self.used[obj.object_name]
            rule = Rule.DUPLICATE_OBJECT_NAME if is_object_name else Rule.DUPLICATE_FILE_NAME
            fail(rule, f"objectName is already used as {usage}")
        own = {obj.object_name: "its own objectName"}

        if obj.object_alias is not None:
            if obj.object_alias == obj.object_name:
                fail(Rule.ALIAS_EQUALS_OBJECT_NAME, "objectAlias must differ from its objectName")
            self._check_unused(obj.object_alias, "objectAlias", own, fail)
            own[obj.object_alias] = "its own objectAlias"
        self._check_safe(obj.file_name, "objectAlias" if obj.object_alias else "objectName", fail)

        for position, entry in enumerate(obj.jmes_path, start=1):
            what = f"jmesPath entry #{position} objectAlias"
            self._check_unused(entry.object_alias, what, own, fail)
            self._check_safe(entry.object_alias, what, fail)
            own[entry.object_alias] = f"its own jmesPath entry #{position} objectAlias"

        self.used[obj.object_name] = (True, f"the objectName of object {quoted_name}")
        if obj.object_alias is not None:
            self.used[obj.object_alias] = (False, f"the objectAlias of object {quoted_name}")
        for position, entry in enumerate(obj.jmes_path, start=1):
            self.used[entry.object_alias] = (
                False,
                f"jmesPath entry #{position} objectAlias of object {quoted_name}",
            )

    def _check_unused(self, name: str, what: str, own: Mapping[str, str], fail: _Fail) -> None:
        if name in own:
            fail(Rule.DUPLICATE_FILE_NAME, f"{what} {_quote(name)} is already {own[name]}")
        if name in self.used:
            fail(
                Rule.DUPLICATE_FILE_NAME,
                f"{what} {_quote(name)} is already used as {self.used[name][1]}",
            )

    @staticmethod
    def _check_safe(file_name: str, what: str, fail: _Fail) -> None:
        problem = unsafe_file_name_reason(file_name)
        if problem is not None:
            fail(
                Rule.UNSAFE_FILE_NAME,
                f"{what} {_quote(file_name)} cannot be a file name: {problem}",
            )


def unsafe_file_name_reason(name: str) -> str | None:
    """Why `name` is not one safe path component inside the mount, or None if it is."""
    if not name:
        return "it is empty"
    if "/" in name:
        return 'it contains "/"'
    if "\0" in name:
        return "it contains a NUL character"
    if name in (".", ".."):
        return f'"{name}" is reserved'
    if name.startswith(".."):
        return 'it starts with ".." (reserved for the atomic writer)'
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_FILE_NAME_BYTES:
        return f"it is longer than {_MAX_FILE_NAME_BYTES} bytes"
    return None


# --------------------------------------------------------------------- secretObjects


def _parse_secret_objects(
    report: _Reporter, raw: object, objects: tuple[SecretObject, ...]
) -> tuple[SyncedSecret, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        report.fail(
            Rule.SECRET_OBJECTS_INVALID,
            None,
            f"spec.secretObjects must be a list, not {_kind(raw)}",
        )
    mounted = frozenset(name for obj in objects for name in obj.file_names)
    synced: list[SyncedSecret] = []
    seen_secret_names: set[str] = set()
    for position, entry in enumerate(raw, start=1):
        secret = _parse_secret_object(report, position, entry, mounted)
        if secret.secret_name in seen_secret_names:
            report.fail(
                Rule.DUPLICATE_SECRET_NAME,
                f"secretObjects entry {_quote(secret.secret_name)}",
                "secretName is used by an earlier secretObjects entry",
                secret_object=secret.secret_name,
            )
        seen_secret_names.add(secret.secret_name)
        synced.append(secret)
    return tuple(synced)


def _parse_secret_object(
    report: _Reporter, position: int, entry: object, mounted: frozenset[str]
) -> SyncedSecret:
    if not isinstance(entry, Mapping):
        report.fail(
            Rule.SECRET_OBJECT_INVALID,
            f"secretObjects entry #{position}",
            f"must be a mapping with secretName, type and data, not {_kind(entry)}",
        )
    raw_name = entry.get("secretName")
    usable_name = raw_name if isinstance(raw_name, str) and raw_name else None
    subject = (
        f"secretObjects entry {_quote(usable_name)}"
        if usable_name
        else f"secretObjects entry #{position}"
    )

    def fail(rule: Rule, problem: str, object_name: str | None = None) -> NoReturn:
        report.fail(rule, subject, problem, object_name=object_name, secret_object=usable_name)

    if raw_name is None or raw_name == "":
        fail(Rule.SECRET_NAME_REQUIRED, "secretName is required")
    if not isinstance(raw_name, str):
        fail(Rule.SECRET_NAME_INVALID, f"secretName must be a string, not {_kind(raw_name)}")
    if len(raw_name) > _DNS_SUBDOMAIN_MAX or not _DNS_SUBDOMAIN.fullmatch(raw_name):
        fail(
            Rule.SECRET_NAME_INVALID,
            "secretName must be a DNS subdomain: lowercase letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most {_DNS_SUBDOMAIN_MAX} characters",
        )

    secret_type = entry.get("type")
    if not isinstance(secret_type, str) or not secret_type:
        fail(Rule.SECRET_TYPE_REQUIRED, 'type is required, e.g. "Opaque"')

    labels = _string_map(entry.get("labels"), "labels", fail)
    annotations = _string_map(entry.get("annotations"), "annotations", fail)

    raw_data = entry.get("data")
    if not isinstance(raw_data, list) or not raw_data:
        fail(
            Rule.SECRET_DATA_REQUIRED,
            "data is required: a non-empty list of {objectName, key} mappings",
        )
    data: list[SyncedSecretData] = []
    seen_keys: set[str] = set()
    for data_position, item in enumerate(raw_data, start=1):
        where = f"data entry #{data_position}"
        if not isinstance(item, Mapping):
            fail(
                Rule.SECRET_DATA_ENTRY_INVALID,
                f"{where} must be a mapping with objectName and key, not {_kind(item)}",
            )
        object_name = item.get("objectName")
        # Upstream trims the name before looking the file up; so do we.
        if not isinstance(object_name, str) or not object_name.strip():
            fail(
                Rule.SECRET_DATA_ENTRY_INVALID,
                f"{where} needs objectName, the mounted file name, as a non-empty string",
            )
        object_name = object_name.strip()
        key = item.get("key")
        if not isinstance(key, str) or not key:
            fail(
                Rule.SECRET_DATA_ENTRY_INVALID,
                f"{where} needs key, the Secret data key, as a non-empty string",
            )
        key_problem = _secret_data_key_problem(key)
        if key_problem is not None:
            fail(
                Rule.SECRET_DATA_KEY_INVALID,
                f"{where} key {_quote(key)} is not a valid Secret data key: {key_problem}",
            )
        if key in seen_keys:
            fail(
                Rule.DUPLICATE_SECRET_DATA_KEY,
                f"{where} key {_quote(key)} is used by an earlier data entry",
            )
        seen_keys.add(key)
        if object_name not in mounted:
            fail(
                Rule.SECRET_DATA_UNKNOWN_FILE,
                f"{where} objectName {_quote(object_name)} is not a file this "
                "SecretProviderClass mounts; it must be an objectAlias, a jmesPath objectAlias "
                f"or an objectName without alias (mounted files: {_name_list(mounted)})",
                object_name=object_name,
            )
        data.append(SyncedSecretData(object_name=object_name, key=key))

    return SyncedSecret(
        secret_name=raw_name,
        type=secret_type,
        data=tuple(data),
        labels=labels,
        annotations=annotations,
    )


def _string_map(raw: object, what: str, fail: _Fail) -> Mapping[str, str]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        fail(Rule.SECRET_METADATA_INVALID, f"{what} must map strings to strings")
    return MappingProxyType(dict(raw))


def _secret_data_key_problem(key: str) -> str | None:
    # Kubernetes' rule for Secret and ConfigMap keys.
    if len(key) > _SECRET_DATA_KEY_MAX:
        return f"longer than {_SECRET_DATA_KEY_MAX} characters"
    if not _SECRET_DATA_KEY.fullmatch(key):
        return "only letters, digits, '-', '_' and '.' are allowed"
    if key in (".", "..") or key.startswith(".."):
        return 'it must not be "." or "..", nor start with ".."'
    return None
