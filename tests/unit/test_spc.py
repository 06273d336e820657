"""SecretProviderClass validation (dew_csi.spc): every rule, the guide's SPCs, and fuzzing."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dew_csi import spc
from dew_csi.spc import (
    MAX_OBJECTS,
    MAX_OBJECTS_BYTES,
    MAX_YAML_NODES,
    OBJECT_KEYS,
    JmesPathEntry,
    ParsedSpc,
    Rule,
    SecretObject,
    SpcValidationError,
    SyncedSecret,
    SyncedSecretData,
    is_ours,
    parse_objects,
    validate_spc,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPC = "spc-test"


def spc_dict(
    objects: Any = '- {objectName: secret_1, objectType: csms, objectVersion: "v1"}',
    *,
    secret_objects: Any = None,
    provider: Any = "cce",
    name: Any = SPC,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"provider": provider, "parameters": {"objects": objects}}
    if secret_objects is not None:
        spec["secretObjects"] = secret_objects
    return {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


_DROP = object()  # marks a key that one() leaves out


def one(**fields: Any) -> str:
    """objects YAML for one object: a valid csms/v1 object with `fields` overriding."""
    obj: dict[str, Any] = {"objectName": "secret_1", "objectType": "csms", "objectVersion": "v1"}
    obj.update(fields)
    return yaml.safe_dump([{k: v for k, v in obj.items() if v is not _DROP}])


def raised(call: Callable[[], object]) -> SpcValidationError:
    with pytest.raises(SpcValidationError) as info:
        call()
    return info.value


def assert_sentence(error: SpcValidationError, spc_name: str = SPC) -> None:
    message = str(error)
    assert message.startswith(f'SecretProviderClass "{spc_name}": ')
    assert "\n" not in message
    assert error.spc_name == spc_name
    assert isinstance(error, ValueError)


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """A "billion laughs" document: a few hundred bytes naming width**levels values."""
    lines = ["- &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"- &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def many_objects(count: int) -> str:
    return "".join(
        f"- {{objectName: s{i}, objectType: csms, objectVersion: v1}}\n" for i in range(count)
    )


# ------------------------------------------------------------------ one test per rule

# (rule, objects YAML, fragments the message must contain, expected .object_name)
OBJECT_RULE_CASES: list[tuple[Rule, str, tuple[str, ...], str | None]] = [
    (
        Rule.OBJECTS_YAML,
        '- objectName: "secret_1\n  objectType: csms\n',
        ("parameters.objects is not valid YAML", "line "),
        None,
    ),
    (Rule.OBJECTS_NOT_LIST, "objectName: secret_1\n", ("must be a YAML list", "a mapping"), None),
    (Rule.OBJECTS_EMPTY, "# nothing here\n", ("lists no objects",), None),
    (Rule.OBJECT_NOT_MAPPING, "- secret_1\n", ("object #1", "must be a mapping", "a string"), None),
    (
        Rule.UNKNOWN_KEY,
        one(objectVerison="v1"),
        (
            'object "secret_1"',
            'unknown key "objectVerison"',
            "objectName, objectAlias, objectType, objectVersion, jmesPath, filePermission",
        ),
        "secret_1",
    ),
    (
        Rule.OBJECT_NAME_REQUIRED,
        one(objectName=_DROP),
        ("object #1", "objectName is required"),
        None,
    ),
    (
        Rule.OBJECT_NAME_INVALID,
        one(objectName=123),
        ("object #1", "objectName must be a string", "an integer", "quote"),
        None,
    ),
    (
        Rule.OBJECT_TYPE_REQUIRED,
        one(objectType=_DROP),
        ('object "secret_1"', "objectType is required", '"csms"'),
        "secret_1",
    ),
    (
        Rule.OBJECT_TYPE_UNSUPPORTED,
        one(objectType="kms"),
        (
            'object "secret_1": objectType "kms" is not supported; '
            'the only supported objectType is "csms"',
        ),
        "secret_1",
    ),
    (
        Rule.OBJECT_VERSION_REQUIRED,
        one(objectVersion=_DROP),
        ('object "secret_1"', "objectVersion is required", '"latest"'),
        "secret_1",
    ),
    (
        Rule.OBJECT_VERSION_INVALID,
        one(objectVersion="V1"),
        ('object "secret_1"', 'objectVersion "V1" is not valid', '"latest"', '"v1"'),
        "secret_1",
    ),
    (
        Rule.OBJECT_ALIAS_INVALID,
        one(objectAlias=""),
        ('object "secret_1"', "objectAlias must not be empty"),
        "secret_1",
    ),
    (
        Rule.JMES_PATH_INVALID,
        one(jmesPath=[]),
        ('object "secret_1"', "jmesPath must be a non-empty list", "an empty list"),
        "secret_1",
    ),
    (
        Rule.JMES_PATH_ENTRY_INVALID,
        one(jmesPath=["key1"]),
        ('object "secret_1"', "jmesPath entry #1 must be a mapping", "a string"),
        "secret_1",
    ),
    (
        Rule.JMES_PATH_PATH_REQUIRED,
        one(jmesPath=[{"objectAlias": "user"}]),
        ('object "secret_1"', "jmesPath entry #1 needs path"),
        "secret_1",
    ),
    (
        Rule.JMES_PATH_BACKSLASH,
        one(jmesPath=[{"path": "a\\b", "objectAlias": "user"}]),
        ('object "secret_1"', "jmesPath entry #1", "backslash"),
        "secret_1",
    ),
    (
        Rule.JMES_PATH_ALIAS_REQUIRED,
        one(jmesPath=[{"path": "key1"}]),
        ('object "secret_1"', "jmesPath entry #1 needs objectAlias"),
        "secret_1",
    ),
    (
        Rule.FILE_PERMISSION_INVALID,
        one(filePermission="0800"),
        ('object "secret_1"', 'filePermission "0800" is not valid', '"0777"'),
        "secret_1",
    ),
    (
        Rule.DUPLICATE_OBJECT_NAME,
        "- {objectName: a, objectType: csms, objectVersion: v1}\n"
        "- {objectName: a, objectType: csms, objectVersion: latest}\n",
        ('object "a"', 'objectName is already used as the objectName of object "a"'),
        "a",
    ),
    (
        Rule.ALIAS_EQUALS_OBJECT_NAME,
        one(objectAlias="secret_1"),
        ('object "secret_1"', "objectAlias must differ from its objectName"),
        "secret_1",
    ),
    (
        Rule.DUPLICATE_FILE_NAME,
        "- {objectName: a, objectType: csms, objectVersion: v1, objectAlias: file}\n"
        "- {objectName: b, objectType: csms, objectVersion: v1, objectAlias: file}\n",
        ('object "b"', 'objectAlias "file" is already used as the objectAlias of object "a"'),
        "b",
    ),
    (
        Rule.UNSAFE_FILE_NAME,
        one(objectAlias="../etc"),
        ('object "secret_1"', 'objectAlias "../etc" cannot be a file name', '"/"'),
        "secret_1",
    ),
    (
        Rule.OBJECTS_TOO_LARGE,
        one() + "#" * MAX_OBJECTS_BYTES,
        ("parameters.objects is larger than the limit of 256 KiB", "split the objects"),
        None,
    ),
    (
        Rule.TOO_MANY_OBJECTS,
        many_objects(MAX_OBJECTS + 1),
        ("parameters.objects lists more than 500 objects, the limit", "split them"),
        None,
    ),
    (
        Rule.OBJECTS_TOO_COMPLEX,
        alias_bomb(),
        ("more than 20000 YAML values once its aliases are expanded, the limit",),
        None,
    ),
]

# (rule, SPC dict, fragments, expected .object_name, expected .secret_object)
SPC_RULE_CASES: list[tuple[Rule, Any, tuple[str, ...], str | None, str | None]] = [
    (
        Rule.SPC_INVALID,
        {**spc_dict(), "spec": ["provider", "cce"]},
        ("spec must be a mapping", "a list"),
        None,
        None,
    ),
    (
        Rule.NAME_MISSING,
        {**spc_dict(), "metadata": {"namespace": "default"}},
        ("SecretProviderClass <unnamed>", "metadata.name"),
        None,
        None,
    ),
    (
        Rule.PROVIDER_UNSUPPORTED,
        spc_dict(provider="azure"),
        ('spec.provider is "azure"', 'only serves provider "cce"'),
        None,
        None,
    ),
    (
        Rule.OBJECTS_MISSING,
        spc_dict(objects=None),
        ("spec.parameters.objects is missing",),
        None,
        None,
    ),
    (
        Rule.OBJECTS_NOT_STRING,
        spc_dict(objects=[{"objectName": "secret_1"}]),
        ("spec.parameters.objects must be a string", "a list"),
        None,
        None,
    ),
    (
        Rule.SECRET_OBJECTS_INVALID,
        spc_dict(secret_objects={"secretName": "s"}),
        ("spec.secretObjects must be a list", "a mapping"),
        None,
        None,
    ),
    (
        Rule.SECRET_OBJECT_INVALID,
        spc_dict(secret_objects=["my-secret"]),
        ("secretObjects entry #1", "must be a mapping"),
        None,
        None,
    ),
    (
        Rule.SECRET_NAME_REQUIRED,
        spc_dict(secret_objects=[{"type": "Opaque", "data": []}]),
        ("secretObjects entry #1", "secretName is required"),
        None,
        None,
    ),
    (
        Rule.SECRET_NAME_INVALID,
        spc_dict(
            secret_objects=[
                {
                    "secretName": "My_Secret",
                    "type": "Opaque",
                    "data": [{"objectName": "secret_1", "key": "k"}],
                }
            ]
        ),
        ('secretObjects entry "My_Secret"', "DNS subdomain"),
        None,
        "My_Secret",
    ),
    (
        Rule.DUPLICATE_SECRET_NAME,
        spc_dict(
            secret_objects=[
                {
                    "secretName": "s",
                    "type": "Opaque",
                    "data": [{"objectName": "secret_1", "key": "a"}],
                },
                {
                    "secretName": "s",
                    "type": "Opaque",
                    "data": [{"objectName": "secret_1", "key": "b"}],
                },
            ]
        ),
        ('secretObjects entry "s"', "earlier secretObjects entry"),
        None,
        "s",
    ),
    (
        Rule.SECRET_TYPE_REQUIRED,
        spc_dict(
            secret_objects=[{"secretName": "s", "data": [{"objectName": "secret_1", "key": "a"}]}]
        ),
        ('secretObjects entry "s"', "type is required"),
        None,
        "s",
    ),
    (
        Rule.SECRET_METADATA_INVALID,
        spc_dict(
            secret_objects=[
                {
                    "secretName": "s",
                    "type": "Opaque",
                    "labels": {"app": 1},
                    "data": [{"objectName": "secret_1", "key": "a"}],
                }
            ]
        ),
        ('secretObjects entry "s"', "labels must map strings to strings"),
        None,
        "s",
    ),
    (
        Rule.SECRET_DATA_REQUIRED,
        spc_dict(secret_objects=[{"secretName": "s", "type": "Opaque"}]),
        ('secretObjects entry "s"', "data is required"),
        None,
        "s",
    ),
    (
        Rule.SECRET_DATA_ENTRY_INVALID,
        spc_dict(secret_objects=[{"secretName": "s", "type": "Opaque", "data": [{"key": "a"}]}]),
        ('secretObjects entry "s"', "data entry #1 needs objectName"),
        None,
        "s",
    ),
    (
        Rule.SECRET_DATA_KEY_INVALID,
        spc_dict(
            secret_objects=[
                {
                    "secretName": "s",
                    "type": "Opaque",
                    "data": [{"objectName": "secret_1", "key": "db user"}],
                }
            ]
        ),
        ('secretObjects entry "s"', 'data entry #1 key "db user" is not a valid Secret data key'),
        None,
        "s",
    ),
    (
        Rule.DUPLICATE_SECRET_DATA_KEY,
        spc_dict(
            secret_objects=[
                {
                    "secretName": "s",
                    "type": "Opaque",
                    "data": [
                        {"objectName": "secret_1", "key": "a"},
                        {"objectName": "secret_1", "key": "a"},
                    ],
                }
            ]
        ),
        ('secretObjects entry "s"', 'data entry #2 key "a" is used by an earlier data entry'),
        None,
        "s",
    ),
    (
        Rule.SECRET_DATA_UNKNOWN_FILE,
        spc_dict(
            secret_objects=[
                {
                    "secretName": "my-secret-01",
                    "type": "Opaque",
                    "data": [{"objectName": "dbusername03", "key": "a"}],
                }
            ]
        ),
        (
            'secretObjects entry "my-secret-01"',
            'objectName "dbusername03" is not a file this SecretProviderClass mounts',
            'mounted files: "secret_1"',
        ),
        "dbusername03",
        "my-secret-01",
    ),
]


def test_every_rule_has_a_case() -> None:
    covered = {case[0] for case in OBJECT_RULE_CASES} | {case[0] for case in SPC_RULE_CASES}
    assert covered == set(Rule)


@pytest.mark.parametrize(
    ("rule", "objects_yaml", "fragments", "object_name"),
    OBJECT_RULE_CASES,
    ids=[case[0].value for case in OBJECT_RULE_CASES],
)
def test_objects_rule(
    rule: Rule, objects_yaml: str, fragments: tuple[str, ...], object_name: str | None
) -> None:
    error = raised(lambda: parse_objects(SPC, objects_yaml))
    assert error.rule == rule
    assert_sentence(error)
    for fragment in fragments:
        assert fragment in str(error)
    assert error.object_name == object_name
    # validate_spc applies the same rules, with the same message.
    whole = raised(lambda: validate_spc(spc_dict(objects_yaml)))
    assert (whole.rule, str(whole)) == (error.rule, str(error))


@pytest.mark.parametrize(
    ("rule", "spc", "fragments", "object_name", "secret_object"),
    SPC_RULE_CASES,
    ids=[case[0].value for case in SPC_RULE_CASES],
)
def test_spc_rule(
    rule: Rule,
    spc: Any,
    fragments: tuple[str, ...],
    object_name: str | None,
    secret_object: str | None,
) -> None:
    error = raised(lambda: validate_spc(spc))
    assert error.rule == rule
    if rule is not Rule.NAME_MISSING:
        assert_sentence(error)
    for fragment in fragments:
        assert fragment in str(error)
    assert error.object_name == object_name
    assert error.secret_object == secret_object


def test_the_guides_example_error_sentence_exactly() -> None:
    error = raised(lambda: parse_objects(SPC, one(objectType="kms")))
    assert str(error) == (
        'SecretProviderClass "spc-test": object "secret_1": objectType "kms" is not supported; '
        'the only supported objectType is "csms"'
    )


# ------------------------------------------------------------- variants of the rules


@pytest.mark.parametrize(
    ("objects_yaml", "rule"),
    [
        ("- objectName: a\n  objectName: b\n", Rule.OBJECTS_YAML),  # duplicate key
        ("- objectName: a\n\tobjectType: csms\n", Rule.OBJECTS_YAML),  # tab indent
        ("- objectName: 2024-13-01\n", Rule.OBJECTS_YAML),  # date that does not convert
        ("- objectName: !!int nope\n", Rule.OBJECTS_YAML),
        ("- !!python/object:os.system {}\n", Rule.OBJECTS_YAML),  # no object construction
        ("[" * 5000, Rule.OBJECTS_YAML),  # nested too deeply
        ("- a\n---\n- b\n", Rule.OBJECTS_YAML),  # two documents
        ("- objectName: a\x00\n", Rule.OBJECTS_YAML),  # character YAML forbids
        ("just text", Rule.OBJECTS_NOT_LIST),
        ("42", Rule.OBJECTS_NOT_LIST),
        ("", Rule.OBJECTS_EMPTY),
        ("[]", Rule.OBJECTS_EMPTY),
        ("- [objectName, a]\n", Rule.OBJECT_NOT_MAPPING),
        ("- null\n", Rule.OBJECT_NOT_MAPPING),
        (one(objectName=""), Rule.OBJECT_NAME_REQUIRED),
        (one(objectName=None), Rule.OBJECT_NAME_REQUIRED),
        (one(objectName=True), Rule.OBJECT_NAME_INVALID),
        (one(objectName=["a"]), Rule.OBJECT_NAME_INVALID),
        (one(objectType=""), Rule.OBJECT_TYPE_REQUIRED),
        (one(objectType="CSMS"), Rule.OBJECT_TYPE_UNSUPPORTED),
        (one(objectType=5), Rule.OBJECT_TYPE_UNSUPPORTED),
        (one(objectVersion=""), Rule.OBJECT_VERSION_REQUIRED),
        (one(objectVersion=1), Rule.OBJECT_VERSION_INVALID),
        (one(objectVersion="Latest"), Rule.OBJECT_VERSION_INVALID),
        (one(objectVersion="v"), Rule.OBJECT_VERSION_INVALID),
        (one(objectVersion="v1.0"), Rule.OBJECT_VERSION_INVALID),
        (one(objectVersion="v1\n"), Rule.OBJECT_VERSION_INVALID),
        (one(objectVersion="v\u0661"), Rule.OBJECT_VERSION_INVALID),  # Arabic-Indic 1
        (one(objectAlias=None), Rule.OBJECT_ALIAS_INVALID),
        (one(objectAlias=7), Rule.OBJECT_ALIAS_INVALID),
        (one(jmesPath="key1"), Rule.JMES_PATH_INVALID),
        (one(jmesPath={"path": "a", "objectAlias": "b"}), Rule.JMES_PATH_INVALID),
        (one(jmesPath=None), Rule.JMES_PATH_INVALID),
        (one(jmesPath=[None]), Rule.JMES_PATH_ENTRY_INVALID),
        (one(jmesPath=[{"path": "", "objectAlias": "b"}]), Rule.JMES_PATH_PATH_REQUIRED),
        (one(jmesPath=[{"path": 5, "objectAlias": "b"}]), Rule.JMES_PATH_PATH_REQUIRED),
        (one(jmesPath=[{"path": "a", "objectAlias": ""}]), Rule.JMES_PATH_ALIAS_REQUIRED),
        (one(jmesPath=[{"path": "a", "objectAlias": ["b"]}]), Rule.JMES_PATH_ALIAS_REQUIRED),
        (
            one(jmesPath=[{"path": "a", "objectAlias": "b", "filePermission": "0600"}]),
            Rule.UNKNOWN_KEY,
        ),
        (one(filePermission=0o600), Rule.FILE_PERMISSION_INVALID),  # unquoted 0600
        (one(filePermission=644), Rule.FILE_PERMISSION_INVALID),  # unquoted 644
        (one(filePermission="1777"), Rule.FILE_PERMISSION_INVALID),  # above 0777
        (one(filePermission="00644"), Rule.FILE_PERMISSION_INVALID),
        (one(filePermission="rw-r--r--"), Rule.FILE_PERMISSION_INVALID),
        (one(filePermission=""), Rule.FILE_PERMISSION_INVALID),
        (one(filePermission=None), Rule.FILE_PERMISSION_INVALID),
    ],
)
def test_rule_variants(objects_yaml: str, rule: Rule) -> None:
    error = raised(lambda: parse_objects(SPC, objects_yaml))
    assert error.rule == rule
    assert_sentence(error)


def _objects(*entries: dict[str, Any]) -> str:
    base = {"objectType": "csms", "objectVersion": "v1"}
    return yaml.safe_dump([{**base, **entry} for entry in entries])


JMES_AB = [{"path": "a", "objectAlias": "fa"}, {"path": "b", "objectAlias": "fb"}]


@pytest.mark.parametrize(
    ("entries", "rule", "fragment"),
    [
        # an alias may not equal another object's objectName, whichever comes first
        (
            [{"objectName": "a", "objectAlias": "b"}, {"objectName": "b"}],
            Rule.DUPLICATE_FILE_NAME,
            'object "b": objectName is already used as the objectAlias of object "a"',
        ),
        (
            [{"objectName": "b"}, {"objectName": "a", "objectAlias": "b"}],
            Rule.DUPLICATE_FILE_NAME,
            'objectAlias "b" is already used as the objectName of object "b"',
        ),
        # ...even when that other object has an alias of its own (the guide's rule)
        (
            [{"objectName": "b", "objectAlias": "x"}, {"objectName": "a", "objectAlias": "b"}],
            Rule.DUPLICATE_FILE_NAME,
            'objectAlias "b" is already used as the objectName of object "b"',
        ),
        # jmesPath aliases: against their own object, each other and other objects
        (
            [{"objectName": "a", "jmesPath": [{"path": "k", "objectAlias": "a"}]}],
            Rule.DUPLICATE_FILE_NAME,
            'jmesPath entry #1 objectAlias "a" is already its own objectName',
        ),
        (
            [
                {
                    "objectName": "a",
                    "objectAlias": "x",
                    "jmesPath": [{"path": "k", "objectAlias": "x"}],
                }
            ],
            Rule.DUPLICATE_FILE_NAME,
            'jmesPath entry #1 objectAlias "x" is already its own objectAlias',
        ),
        (
            [
                {
                    "objectName": "a",
                    "jmesPath": [
                        {"path": "k1", "objectAlias": "f"},
                        {"path": "k2", "objectAlias": "f"},
                    ],
                }
            ],
            Rule.DUPLICATE_FILE_NAME,
            'jmesPath entry #2 objectAlias "f" is already its own jmesPath entry #1 objectAlias',
        ),
        (
            [{"objectName": "a", "jmesPath": JMES_AB}, {"objectName": "b", "objectAlias": "fb"}],
            Rule.DUPLICATE_FILE_NAME,
            'objectAlias "fb" is already used as jmesPath entry #2 objectAlias of object "a"',
        ),
        (
            [{"objectName": "a", "jmesPath": JMES_AB}, {"objectName": "fa"}],
            Rule.DUPLICATE_FILE_NAME,
            'object "fa": objectName is already used as jmesPath entry #1 objectAlias',
        ),
        (
            [
                {"objectName": "a"},
                {"objectName": "b", "jmesPath": [{"path": "k", "objectAlias": "a"}]},
            ],
            Rule.DUPLICATE_FILE_NAME,
            'jmesPath entry #1 objectAlias "a" is already used as the objectName of object "a"',
        ),
    ],
)
def test_name_clashes(entries: list[dict[str, Any]], rule: Rule, fragment: str) -> None:
    error = raised(lambda: parse_objects(SPC, _objects(*entries)))
    assert error.rule == rule
    assert fragment in str(error)
    assert_sentence(error)


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"objectName": "a", "objectAlias": "x/y"}, 'contains "/"'),
        ({"objectName": "a", "objectAlias": "."}, "reserved"),
        ({"objectName": "a", "objectAlias": ".."}, "reserved"),
        ({"objectName": "a", "objectAlias": "..data"}, 'starts with ".."'),
        ({"objectName": "a", "objectAlias": "a\0b"}, "NUL"),
        ({"objectName": "a", "objectAlias": "é" * 128}, "longer than 255 bytes"),
        ({"objectName": ".."}, 'objectName ".." cannot be a file name'),
        ({"objectName": "..data"}, 'objectName "..data" cannot be a file name'),
        (
            {"objectName": "a", "jmesPath": [{"path": "k", "objectAlias": "../k"}]},
            'jmesPath entry #1 objectAlias "../k" cannot be a file name',
        ),
    ],
)
def test_unsafe_file_names(entry: dict[str, Any], fragment: str) -> None:
    error = raised(lambda: parse_objects(SPC, _objects(entry)))
    assert error.rule == Rule.UNSAFE_FILE_NAME
    assert fragment in str(error)


def test_object_name_need_not_be_a_file_name_when_aliased() -> None:
    (obj,) = parse_objects(SPC, _objects({"objectName": "..db", "objectAlias": "db"}))
    assert (obj.object_name, obj.file_name) == ("..db", "db")


def test_aliases_with_spaces_dots_and_unicode_are_fine() -> None:
    objects = parse_objects(
        SPC,
        _objects(
            {"objectName": "a", "objectAlias": "my secret"},
            {"objectName": ".hidden"},
            {"objectName": "b", "objectAlias": "密钥"},
            {"objectName": "c", "objectAlias": "a.b..c"},
        ),
    )
    assert [o.file_name for o in objects] == ["my secret", ".hidden", "密钥", "a.b..c"]


@pytest.mark.parametrize(
    "name",
    ["a", "A-z_0.9", "x" * 64, ".x", "-", "secret_1", "db.password"],
)
def test_object_names_follow_the_csms_rule(name: str) -> None:
    (obj,) = parse_objects(SPC, one(objectName=name))
    assert obj.object_name == name


@pytest.mark.parametrize(
    "name",
    [
        "x" * 65,
        "my secret",
        "team/db",
        "密钥",
        "a\nI0101 00:00:00.000000 1 forged.go:1] forged",
        "a\n",  # `$` would match before a final newline: the rule is a full match
        "a\rb",
        "a\x1b[31mred",
        "a\u2028b",
        "é",
    ],
)
def test_object_names_outside_the_csms_rule_are_refused(name: str) -> None:
    objects = json.dumps([{"objectName": name, "objectType": "csms", "objectVersion": "v1"}])
    error = raised(lambda: parse_objects(SPC, objects))
    assert error.rule == Rule.OBJECT_NAME_INVALID
    assert_sentence(error)
    message = str(error)
    assert "objectName must be a CSMS secret name: 1 to 64 letters, digits" in message
    assert message.startswith(f'SecretProviderClass "{SPC}": object "')
    # The name is quoted with every control character and surrogate escaped: one clean line.
    assert message.isprintable()
    message.encode("utf-8")
    assert error.object_name == name


def test_jmes_path_may_hold_any_character_but_backslash() -> None:
    paths = ["key1", "a.b", "data[0].user", "we!rd k€y/@$", "'quoted'"]
    jmes = [{"path": p, "objectAlias": f"f{i}"} for i, p in enumerate(paths)]
    (obj,) = parse_objects(SPC, _objects({"objectName": "s", "jmesPath": jmes}))
    assert [e.path for e in obj.jmes_path] == paths


@pytest.mark.parametrize(
    ("text", "mode"),
    [("0600", 0o600), ("644", 0o644), ("0444", 0o444), ("0", 0), ("0777", 0o777), ("400", 0o400)],
)
def test_file_permission_is_octal(text: str, mode: int) -> None:
    (obj,) = parse_objects(SPC, one(filePermission=text))
    assert obj.file_permission == mode


def _spc_with_data_key(key: str) -> dict[str, Any]:
    data = [{"objectName": "secret_1", "key": key}]
    return spc_dict(secret_objects=[{"secretName": "s", "type": "Opaque", "data": data}])


@pytest.mark.parametrize("key", ["tls.crt", "db_username-01", ".dotfile", "A", "k" * 253])
def test_valid_secret_data_keys(key: str) -> None:
    assert validate_spc(_spc_with_data_key(key)).secret_objects[0].data[0].key == key


@pytest.mark.parametrize("key", ["..", ".", "..x", "a/b", "k" * 254, "ключ"])
def test_invalid_secret_data_keys(key: str) -> None:
    error = raised(lambda: validate_spc(_spc_with_data_key(key)))
    assert error.rule == Rule.SECRET_DATA_KEY_INVALID


@pytest.mark.parametrize("secret_name", ["-a", "a-", "A", "a_b", "a..b", "a" * 254, "", 5])
def test_secret_name_must_be_a_dns_subdomain(secret_name: Any) -> None:
    spc = spc_dict(
        secret_objects=[
            {
                "secretName": secret_name,
                "type": "Opaque",
                "data": [{"objectName": "secret_1", "key": "k"}],
            }
        ]
    )
    assert raised(lambda: validate_spc(spc)).rule in {
        Rule.SECRET_NAME_INVALID,
        Rule.SECRET_NAME_REQUIRED,
    }


def test_secret_data_must_name_a_mounted_file_not_an_aliased_object_name() -> None:
    spc = spc_dict(
        objects=_objects({"objectName": "secret_1", "objectAlias": "secret_test"}),
        secret_objects=[
            {"secretName": "s", "type": "Opaque", "data": [{"objectName": "secret_1", "key": "k"}]}
        ],
    )
    error = raised(lambda: validate_spc(spc))
    assert error.rule == Rule.SECRET_DATA_UNKNOWN_FILE
    assert 'mounted files: "secret_test"' in str(error)


def test_secret_data_object_name_is_trimmed_as_upstream_does() -> None:
    spc = spc_dict(
        secret_objects=[
            {
                "secretName": "s",
                "type": "Opaque",
                "data": [{"objectName": " secret_1 ", "key": "k"}],
            }
        ]
    )
    assert validate_spc(spc).secret_objects[0].data == (SyncedSecretData("secret_1", "k"),)


def test_provider_missing() -> None:
    error = raised(lambda: validate_spc(spc_dict(provider=None)))
    assert error.rule == Rule.PROVIDER_UNSUPPORTED
    assert "spec.provider is missing" in str(error)


@pytest.mark.parametrize("junk", [None, "spc", ["a"], 3])
def test_validate_spc_rejects_a_non_mapping(junk: Any) -> None:
    error = raised(lambda: validate_spc(junk))
    assert error.rule == Rule.SPC_INVALID
    assert str(error).startswith("SecretProviderClass <unnamed>: ")


def test_parse_objects_rejects_a_non_string() -> None:
    bad: Any = [{"objectName": "a"}]
    error = raised(lambda: parse_objects(SPC, bad))
    assert error.rule == Rule.OBJECTS_NOT_STRING
    assert_sentence(error)


def test_spc_names_are_quoted_safely_in_messages() -> None:
    error = raised(lambda: parse_objects('evil"\nname', "[]"))
    assert str(error).startswith('SecretProviderClass "evil\\"\\nname": ')
    assert "\n" not in str(error)


# ----------------------------------------------------------------- order of checks


def test_first_problem_in_document_order_is_reported() -> None:
    objects = (
        "- {objectName: a, objectType: csms, objectVersion: V1}\n"
        "- {objectName: b, objectType: kms, objectVersion: v1}\n"
    )
    error = raised(lambda: parse_objects(SPC, objects))
    assert (error.rule, error.object_name) == (Rule.OBJECT_VERSION_INVALID, "a")


def test_unknown_keys_are_reported_before_missing_fields() -> None:
    error = raised(lambda: parse_objects(SPC, "- {objectname: a, objectType: csms}\n"))
    assert error.rule == Rule.UNKNOWN_KEY
    assert 'unknown key "objectname"' in str(error)
    assert "object #1" in str(error)


def test_fields_are_checked_in_a_fixed_order() -> None:
    # objectName, objectType, objectVersion, objectAlias, jmesPath, filePermission
    broken = {"objectType": "kms", "objectVersion": "x", "objectAlias": "", "jmesPath": []}
    error = raised(lambda: parse_objects(SPC, yaml.safe_dump([{"objectName": "a", **broken}])))
    assert error.rule == Rule.OBJECT_TYPE_UNSUPPORTED
    error = raised(
        lambda: parse_objects(
            SPC, yaml.safe_dump([{"objectName": "a", **broken, "objectType": "csms"}])
        )
    )
    assert error.rule == Rule.OBJECT_VERSION_INVALID


def test_objects_are_checked_before_secret_objects() -> None:
    spc = spc_dict(objects=one(objectType="kms"), secret_objects="not a list")
    assert raised(lambda: validate_spc(spc)).rule == Rule.OBJECT_TYPE_UNSUPPORTED


# ----------------------------------------------------------------- messages stay clean


@pytest.mark.parametrize(
    "objects_yaml",
    [
        '- objectName: "s3cr3t-value\n  objectType: csms\n',  # unterminated quote
        "- objectName: !!int s3cr3t-value\n",  # conversion error text would quote it
        "- objectName: !!float s3cr3t-value\n",
        "- objectName: a\n  objectType: csms\n  objectVersion: v1\n  s3cr3t-value\n",
        "- objectName: a\n  objectAlias: 2099-99-99 s3cr3t-value: x\n",
    ],
)
def test_yaml_errors_do_not_echo_the_document(objects_yaml: str) -> None:
    error = raised(lambda: parse_objects(SPC, objects_yaml))
    assert "s3cr3t" not in str(error)
    assert_sentence(error)


def test_yaml_error_names_the_line() -> None:
    objects = "- objectName: a\n  objectType: csms\n  objectVersion: [v1\n"
    error = raised(lambda: parse_objects(SPC, objects))
    assert error.rule == Rule.OBJECTS_YAML
    assert re.search(r"\(line \d+, column \d+\)$", str(error))


# ------------------------------------------------------------------- guide examples


def _example_spcs() -> list[Path]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        if document.get("kind") == "SecretProviderClass":
            found.append(path)
    return found


def test_the_guide_has_four_secret_provider_classes() -> None:
    assert [p.name for p in _example_spcs()] == [
        "secretproviderclass-k8s-secrets.yaml",
        "secretproviderclass-realtime.yaml",
        "secretproviderclass-rotation.yaml",
        "secretproviderclass.yaml",
    ]


def _load_example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


def test_guide_method_one_spc() -> None:
    parsed = validate_spc(_load_example("secretproviderclass.yaml"))
    assert parsed == ParsedSpc(
        name="spc-test",
        namespace=None,
        provider="cce",
        objects=(
            SecretObject(
                object_name="secret_1",
                object_type="csms",
                object_version="v1",
                object_alias="secret_test",
            ),
        ),
    )
    (obj,) = parsed.objects
    assert obj.file_name == "secret_test"
    assert obj.file_names == ("secret_test",)
    assert not obj.is_latest
    assert parsed.mounted_file_names == {"secret_test"}


def test_guide_rotation_and_realtime_spcs() -> None:
    rotation = validate_spc(_load_example("secretproviderclass-rotation.yaml"))
    assert rotation.objects == (SecretObject("secret_1", "csms", "latest"),)
    assert rotation.objects[0].is_latest
    assert rotation.objects[0].file_name == "secret_1"

    realtime = validate_spc(_load_example("secretproviderclass-realtime.yaml"))
    assert realtime.objects == (
        SecretObject("secret_1", "csms", "latest"),
        SecretObject("secret_2", "csms", "v1"),
    )


def test_guide_method_two_spc_with_jmes_path_and_secret_objects() -> None:
    parsed = validate_spc(_load_example("secretproviderclass-k8s-secrets.yaml"))
    assert parsed.name == "nginx-deployment-spc-k8s-secrets"
    assert parsed.objects == (
        SecretObject(
            object_name="secret_1",
            object_type="csms",
            object_version="latest",
            jmes_path=(
                JmesPathEntry("key1", "dbusername01"),
                JmesPathEntry("key2", "dbusername02"),
            ),
        ),
    )
    assert parsed.objects[0].file_names == ("secret_1", "dbusername01", "dbusername02")
    assert parsed.secret_objects == (
        SyncedSecret(
            secret_name="my-secret-01",
            type="Opaque",
            data=(
                SyncedSecretData("dbusername01", "db_username_01"),
                SyncedSecretData("dbusername02", "db_username_02"),
            ),
        ),
    )


def test_labels_annotations_and_namespace_are_kept() -> None:
    spc = spc_dict(
        secret_objects=[
            {
                "secretName": "s",
                "type": "kubernetes.io/tls",
                "labels": {"app": "web"},
                "annotations": {"note": "x"},
                "data": [{"objectName": "secret_1", "key": "tls.crt"}],
            }
        ]
    )
    parsed = validate_spc(spc)
    assert parsed.namespace == "default"
    (secret,) = parsed.secret_objects
    assert dict(secret.labels) == {"app": "web"}
    assert dict(secret.annotations) == {"note": "x"}
    with pytest.raises(TypeError):
        secret.labels["app"] = "changed"  # type: ignore[index]


def test_is_ours() -> None:
    assert is_ours(spc_dict())
    assert not is_ours(spc_dict(provider="azure"))
    assert not is_ours(spc_dict(provider=None))
    assert not is_ours({"spec": None})
    assert not is_ours(None)
    assert not is_ours("cce")


def test_models_are_frozen_and_hashable() -> None:
    parsed = validate_spc(_load_example("secretproviderclass-k8s-secrets.yaml"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.objects[0].object_name = "other"  # type: ignore[misc]
    assert hash(parsed) == hash(validate_spc(_load_example("secretproviderclass-k8s-secrets.yaml")))


def test_guide_yaml_quirks() -> None:
    # Deeply indented block scalar, comments, quoted and unquoted values.
    objects = """\
          # the secrets to mount
          - objectName: "secret_1"   # quoted
            objectVersion: "latest"  # change "v1"to "latest"
            objectType: csms
          - objectName: secret_2
            objectVersion: v12
            objectType: "csms"
            filePermission: "0640"
"""
    parsed = parse_objects(SPC, objects)
    assert [(o.object_name, o.object_version, o.file_permission) for o in parsed] == [
        ("secret_1", "latest", None),
        ("secret_2", "v12", 0o640),
    ]


# ------------------------------------------------------------------------- fuzzing


def _is_safe_component(name: str) -> bool:
    # Written independently of spc.unsafe_file_name_reason.
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
        and not name.startswith("..")
        and len(name.encode("utf-8", "surrogatepass")) <= 255
    )


def check_accepted(objects: tuple[SecretObject, ...], source: Any = None) -> None:
    """Invariants every accepted parse result satisfies."""
    assert isinstance(objects, tuple)
    assert objects
    names: list[str] = []
    for obj in objects:
        assert isinstance(obj, SecretObject)
        assert obj.object_type == "csms"
        assert obj.object_version == "latest" or re.fullmatch(r"v[0-9]+", obj.object_version)
        assert obj.file_permission is None or 0 <= obj.file_permission <= 0o777
        names.append(obj.object_name)
        if obj.object_alias is not None:
            names.append(obj.object_alias)
        for entry in obj.jmes_path:
            assert entry.path
            assert "\\" not in entry.path
            names.append(entry.object_alias)
        for file_name in obj.file_names:
            assert _is_safe_component(file_name), file_name
    assert len(names) == len(set(names)), "objectNames and aliases must all be distinct"
    if source is not None:
        assert [o.object_name for o in objects] == [s["objectName"] for s in source]
        assert [o.object_alias for o in objects] == [s.get("objectAlias") for s in source]
        assert [o.object_version for o in objects] == [s["objectVersion"] for s in source]
        assert [[(e.path, e.object_alias) for e in o.jmes_path] for o in objects] == [
            [(e["path"], e["objectAlias"]) for e in s.get("jmesPath", [])] for s in source
        ]


def parse_or_reject(text: str) -> tuple[SecretObject, ...] | None:
    """parse_objects must return a valid tuple or raise SpcValidationError, nothing else."""
    outcome: tuple[SecretObject, ...] | SpcValidationError
    try:
        outcome = parse_objects(SPC, text)
    except SpcValidationError as error:
        outcome = error
    if isinstance(outcome, SpcValidationError):
        assert outcome.rule in set(Rule)
        assert_sentence(outcome)
        return None
    check_accepted(outcome)
    return outcome


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["csms", "latest", "v1", "v02", "0644", "..", ".", "a/b", "", "secret_1"]),
)
yaml_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(OBJECT_KEYS)), children, max_size=5
        )
    ),
    max_leaves=20,
)


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text(text: str) -> None:
    parse_or_reject(text)


@FUZZ
@given(yaml_values)
def test_fuzz_arbitrary_yaml_structures(value: Any) -> None:
    parse_or_reject(yaml.safe_dump(value))


@FUZZ
@given(st.text(alphabet="-:[]{}#&*!|>'\"%@` \n\t?,.01vlatesobjectNameTypVrsinAlias", max_size=200))
def test_fuzz_yaml_punctuation_soup(text: str) -> None:
    parse_or_reject(text)


GUIDE_OBJECTS = """\
- objectName: "secret_1"
  objectType: "csms"
  objectVersion: "latest"
  jmesPath:
     - path: key1
       objectAlias: dbusername01
     - path: key2
       objectAlias: dbusername02
"""


@FUZZ
@given(st.data())
def test_fuzz_mutations_of_the_guide_yaml(data: st.DataObject) -> None:
    text = GUIDE_OBJECTS
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        char = data.draw(st.sampled_from(list(":-[]{}#'\"\n \t.\\/0")))
        if action == "delete":
            text = text[:position] + text[position + 1 :]
        elif action == "insert":
            text = text[:position] + char + text[position:]
        else:
            text = text[:position] + char + text[position + 1 :]
    parse_or_reject(text)


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """Valid nine times in ten, so acceptance and each rejection both get exercised."""
    return st.tuples(valid, invalid, st.integers(0, 9)).map(
        lambda drawn: drawn[1] if drawn[2] == 0 else drawn[0]
    )


names = mostly(
    st.sampled_from(["a", "b", "c", "d", "e", "secret_1"]),
    st.sampled_from(["..", ".", "..x", "a/b", "", "x\0y"]),
)


_object_fields = st.fixed_dictionaries(
    {
        "objectName": names,
        "objectType": mostly(st.just("csms"), st.sampled_from(["kms", "", 1, None])),
        "objectVersion": mostly(
            st.sampled_from(["latest", "v1", "v10"]), st.sampled_from(["V1", "", 3, "v"])
        ),
    },
    optional={
        "objectAlias": names,
        "jmesPath": st.lists(
            st.fixed_dictionaries(
                {
                    "path": mostly(st.sampled_from(["k", "a.b"]), st.sampled_from(["a\\b", ""])),
                    "objectAlias": names,
                }
            ),
            max_size=3,
        ),
        "filePermission": mostly(st.sampled_from(["0600", "644"]), st.sampled_from(["0999", 420])),
    },
)
# An unknown key in one object of ten.
object_like = st.tuples(_object_fields, st.integers(0, 9)).map(
    lambda drawn: {**drawn[0], "bogus": 1} if drawn[1] == 0 else drawn[0]
)


@FUZZ
@given(st.lists(object_like, min_size=1, max_size=4))
def test_fuzz_object_like_lists_accept_only_valid_ones(objects: list[dict[str, Any]]) -> None:
    # Roughly half the draws are complete objects, so acceptance is exercised too.
    result = parse_or_reject(yaml.safe_dump(objects))
    if result is not None:
        check_accepted(result, objects)


# Control and line-break characters are left out only because PyYAML's dump/load does not
# round-trip some of them (e.g. U+0085); the validator itself accepts them.
safe_names = st.text(
    alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
    min_size=1,
    max_size=20,
).filter(lambda n: n not in (".", "..") and not n.startswith(".."))


csms_names = st.from_regex(r"[a-zA-Z0-9._-]{1,64}", fullmatch=True).filter(
    lambda n: n not in (".", "..") and not n.startswith("..")
)


@st.composite
def valid_objects(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 4))
    names = draw(st.lists(csms_names, min_size=count, max_size=count, unique=True))
    pool = draw(
        st.lists(safe_names, min_size=count * 3, max_size=count * 3, unique=True).filter(
            lambda aliases: not set(aliases) & set(names)
        )
    )
    objects: list[dict[str, Any]] = []
    for index in range(count):
        name = names[index]
        alias, jmes_a, jmes_b = pool[index * 3 : index * 3 + 3]
        obj: dict[str, Any] = {
            "objectName": name,
            "objectType": "csms",
            "objectVersion": draw(st.sampled_from(["latest", "v1", "v42"])),
        }
        if draw(st.booleans()):
            obj["objectAlias"] = alias
        if draw(st.booleans()):
            obj["jmesPath"] = [
                {"path": "user", "objectAlias": jmes_a},
                {"path": "pass.word", "objectAlias": jmes_b},
            ]
        if draw(st.booleans()):
            obj["filePermission"] = draw(st.sampled_from(["0400", "640", "0777"]))
        objects.append(obj)
    return objects


@FUZZ
@given(valid_objects())
def test_every_valid_list_is_accepted_as_written(objects: list[dict[str, Any]]) -> None:
    result = parse_objects(SPC, yaml.safe_dump(objects, allow_unicode=True))
    check_accepted(result, objects)
    for obj, source in zip(result, objects, strict=True):
        expected_mode = source.get("filePermission")
        assert obj.file_permission == (None if expected_mode is None else int(expected_mode, 8))


secret_data_like = st.fixed_dictionaries(
    {
        "objectName": mostly(st.just("secret_1"), st.sampled_from(["missing", " secret_1", 1])),
        "key": mostly(st.sampled_from(["k", "k2", "k3"]), st.sampled_from(["bad key", ".."])),
    }
)
secret_object_like = st.fixed_dictionaries(
    {
        "secretName": mostly(st.sampled_from(["my-secret", "s"]), st.sampled_from(["Bad", "", 1])),
        "type": mostly(st.just("Opaque"), st.sampled_from(["", None])),
        "data": st.lists(mostly(secret_data_like, st.text(max_size=3)), max_size=3),
    },
    optional={"labels": mostly(st.just({"a": "b"}), st.sampled_from([{"a": 1}, "x"]))},
)


@FUZZ
@given(mostly(st.lists(mostly(secret_object_like, yaml_values), max_size=3), yaml_values))
def test_fuzz_secret_objects(secret_objects: Any) -> None:
    spc = spc_dict()
    spc["spec"]["secretObjects"] = secret_objects
    try:
        parsed = validate_spc(spc)
    except SpcValidationError as error:
        assert_sentence(error)
        return
    secret_names = [s.secret_name for s in parsed.secret_objects]
    assert len(secret_names) == len(set(secret_names))
    for secret in parsed.secret_objects:
        assert secret.type
        assert secret.data
        keys = [d.key for d in secret.data]
        assert len(keys) == len(set(keys))
        assert all(d.object_name in parsed.mounted_file_names for d in secret.data)


# --------------------------------------------------------------------- bounds (hostile input)


def test_the_bounds_themselves_are_accepted() -> None:
    assert len(parse_objects(SPC, many_objects(MAX_OBJECTS))) == MAX_OBJECTS
    padded = one() + "#" * (MAX_OBJECTS_BYTES - len(one()))
    assert len(padded.encode()) == MAX_OBJECTS_BYTES
    assert len(parse_objects(SPC, padded)) == 1


def test_the_size_bound_counts_utf8_bytes() -> None:
    comment = "# " + "密" * (MAX_OBJECTS_BYTES // 3) + "\n"  # fewer characters than the bound
    assert len(comment) < MAX_OBJECTS_BYTES < len(comment.encode())
    error = raised(lambda: parse_objects(SPC, one() + comment))
    assert error.rule == Rule.OBJECTS_TOO_LARGE
    assert f"({len((one() + comment).encode())} bytes)" in str(error)


class _NoParsing:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the YAML parser was used")


def test_oversized_objects_are_refused_before_any_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spc, "_SafeLoader", _NoParsing)
    monkeypatch.setattr(spc.yaml, "load", _NoParsing)
    huge = many_objects(15_000)  # the 15000 objects, close to 1 MiB
    assert len(huge) > 3 * MAX_OBJECTS_BYTES
    for refuse in (lambda: parse_objects(SPC, huge), lambda: validate_spc(spc_dict(huge))):
        error = raised(refuse)
        assert error.rule == Rule.OBJECTS_TOO_LARGE
        assert_sentence(error)
    with pytest.raises(SpcValidationError, match="larger than the limit"):
        spc.check_objects_size(SPC, huge)
    spc.check_objects_size(SPC, one())  # within the bound: nothing to say


def merge_bomb(levels: int = 12) -> str:
    """Merge keys that double at every level: each mapping merges the previous one twice."""
    lines = ["- &m0 {objectName: a, objectType: csms, objectVersion: v1}"]
    lines += [f"- &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: x}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("objects_yaml", "rule"),
    [
        (alias_bomb(levels=30), Rule.OBJECTS_TOO_COMPLEX),  # 10**30 values
        (alias_bomb(levels=5, width=9), Rule.OBJECTS_TOO_COMPLEX),  # 9**5 = 59049
        ("- &a {objectName: *a}\n", Rule.OBJECTS_YAML),  # recursive: infinite
        ("- &a [*a]\n", Rule.OBJECTS_YAML),
        (merge_bomb(levels=40), Rule.OBJECTS_TOO_COMPLEX),
        ("[" + ", ".join(["x"] * (MAX_YAML_NODES + 1)) + "]", Rule.TOO_MANY_OBJECTS),
        (
            "- objectName: a\n  jmesPath: [" + ", ".join(["x"] * MAX_YAML_NODES) + "]\n",
            Rule.OBJECTS_TOO_COMPLEX,
        ),
    ],
    ids=["billion-laughs", "just-over", "recursive-map", "recursive-list", "merge", "wide", "deep"],
)
def test_expanding_documents_are_refused_before_loading(
    monkeypatch: pytest.MonkeyPatch, objects_yaml: str, rule: Rule
) -> None:
    monkeypatch.setattr(spc.yaml, "load", _NoParsing)  # nothing is built: the scan refuses
    assert len(objects_yaml) < MAX_OBJECTS_BYTES
    error = raised(lambda: parse_objects(SPC, objects_yaml))
    assert error.rule == rule
    assert_sentence(error)


def test_aliases_within_the_bounds_still_work() -> None:
    objects = parse_objects(
        SPC,
        "- &defaults {objectName: a, objectType: csms, objectVersion: latest}\n"
        "- <<: *defaults\n  objectName: b\n"
        "- {<<: *defaults, objectName: c, objectVersion: v2}\n",
    )
    assert [(o.object_name, o.object_version) for o in objects] == [
        ("a", "latest"),
        ("b", "latest"),
        ("c", "v2"),
    ]


@pytest.mark.parametrize(
    "objects_yaml",
    [
        '- {objectName: "a\\udc80", objectType: csms, objectVersion: v1}\n',  # a YAML escape
        "- {objectName: a\udc80, objectType: csms, objectVersion: v1}\n",  # JSON-decoded raw
    ],
    ids=["escaped", "raw"],
)
def test_a_lone_surrogate_is_a_validation_error(objects_yaml: str) -> None:
    error = raised(lambda: parse_objects(SPC, objects_yaml))
    assert error.rule in (Rule.OBJECTS_YAML, Rule.OBJECT_NAME_INVALID)
    assert_sentence(error)
    str(error).encode("utf-8")  # a message gRPC, an Event and a log can carry


def test_parsing_runs_in_libyaml() -> None:
    # PyYAML's wheels bundle libyaml; without it parsing is about 5 times slower (still bounded).
    assert spc.yaml_uses_libyaml()
