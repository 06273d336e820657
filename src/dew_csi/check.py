"""`dew-csi check pod|spc`: explain, without mounting anything, whether secrets would mount.

`check pod NAME` walks what kubelet, the driver and dew-provider would do for each of the pod's
inline CSI volumes of driver `secrets-store.csi.k8s.io`, one line per check:

1. the volume is `readOnly: true` (the driver refuses anything else);
2. its SecretProviderClass exists in the pod's namespace, names provider `cce` and is valid
   (`spc.validate_spc`, so the message is the one the provider and the webhook give);
3. the pod's ServiceAccount exists and its `cce.io/dew-resource` annotation lists every
   objectName (`provider.mount.allowed_secrets`/`authorise`: the provider's own messages);
4. credentials resolve: the volume's nodePublishSecretRef Secret (key names only are ever shown),
   or else this command's default chain (environment or --env-file, --credentials-dir, the ECS
   metadata service), the same order the provider uses;
5. every secret and version exists in CSMS (`latest` is shown as the version it resolves to);
6. every jmesPath entry matches something in the secret's JSON (`provider.mount.render_object`,
   so the message is the provider's; a missing path also lists the secret's top-level key names);
7. every `secretObjects` entry takes its keys from files the SecretProviderClass mounts.

`check spc NAME` runs the SecretProviderClass-level checks (2, 4 with the default chain, 5, 6, 7)
and, with `--service-account SA`, the whitelist (3).

Without a CSMS location (no `--region`, `--endpoint` or `CSMS_ENDPOINT`/`HUAWEICLOUD_SDK_REGION`
from `--env-file` or the environment), only the Kubernetes checks run (1, 2, 3, 7, and the
nodePublishSecretRef Secret of 4); the credentials and CSMS checks are reported as not checked,
with the options that enable them.

A failed check does not stop independent ones (a whitelist failure still lets CSMS be checked);
checks that depend on a failed one are reported as not checked. Exit status: 0 when every check
passed, 1 when any failed (a missing pod is a failed check), 2 for usage errors.

Never printed: secret values (not even their length), secret keys, security tokens, the values
of the nodePublishSecretRef Secret. Names, version ids, AKs, project ids and JSON key names are
identifiers and are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, TextIO

from dew_csi import DRIVER_NAME, PROVIDER_NAME, kube, spc
from dew_csi.csms import (
    Credentials,
    CredentialsChain,
    CredentialsError,
    CredentialsProvider,
    CsmsClient,
    CsmsClientConfig,
    CsmsError,
    FileCredentialsProvider,
    MetadataCredentialsProvider,
    RetryPolicy,
    SecretVersion,
    credentials_from_node_publish_secrets,
)
from dew_csi.csms.cli import (
    ENV_PROJECT_ID,
    CsmsEnvironment,
    EnvCredentialsProvider,
    NoCsmsLocation,
    UsageError,
    csms_config_from_args,
    environment_from_args,
)
from dew_csi.logs import escape
from dew_csi.provider import mount
from dew_csi.volume_context import KUBELET_OWNED, SECRET_PROVIDER_CLASS

PROGRAM: Final = "dew-csi check"
DEFAULT_METADATA_URL: Final = "http://169.254.169.254"
_KEYS_LISTED_MAX: Final = 20
# CSMS failures that are about the connection or the credentials, not one secret: the first one
# ends the CSMS checks of a volume, as every further read would fail the same way.
_CSMS_BLOCKING: Final = frozenset(
    {mount.Status.UNAUTHENTICATED, mount.Status.UNAVAILABLE, mount.Status.FAILED_PRECONDITION}
)


# --------------------------------------------------------------------------- report


class Outcome(Enum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_CHECKED = "not checked"


_MARKS: Final = {
    Outcome.PASSED: ("✔", "OK  "),
    Outcome.FAILED: ("✘", "FAIL"),
    Outcome.NOT_CHECKED: ("-", "SKIP"),
}


def _printable(text: str) -> str:
    """Names come from the cluster and CSMS: never let one drive the operator's terminal (one
    escaping for logs and this report: control characters, line separators, bidi marks)."""
    return escape(text)


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class Report:
    """Prints one line per check as it is made, and the closing summary."""

    def __init__(self, out: TextIO, *, plain: bool = False) -> None:
        self._out = out
        symbols = "".join(mark for mark, _ in _MARKS.values())
        self._plain = plain or not _can_encode(out, symbols)
        self.counts = dict.fromkeys(Outcome, 0)

    def heading(self, text: str) -> None:
        self._print(text)

    def passed(self, text: str) -> None:
        self._line(Outcome.PASSED, text)

    def failed(self, text: str) -> None:
        self._line(Outcome.FAILED, text)

    def not_checked(self, text: str) -> None:
        self._line(Outcome.NOT_CHECKED, text if self._plain else f"not checked: {text}")

    def _mark(self, outcome: Outcome) -> str:
        symbol, word = _MARKS[outcome]
        return word if self._plain else symbol

    def _line(self, outcome: Outcome, text: str) -> None:
        self.counts[outcome] += 1
        self._print(f"  {self._mark(outcome)} {text}")

    def _print(self, text: str) -> None:
        print(_printable(text), file=self._out, flush=True)

    @property
    def failures(self) -> int:
        return self.counts[Outcome.FAILED]

    def summary(self, success: str, failure: str) -> int:
        """Print the closing line; the exit status."""
        checks = self.counts[Outcome.PASSED] + self.failures
        skipped = self.counts[Outcome.NOT_CHECKED]
        not_checked = f", {skipped} not checked" if skipped else ""
        if self.failures:
            self._print(
                f"{self._mark(Outcome.FAILED)} {self.failures} of {checks} "
                f"{_plural(checks, 'check')} failed{not_checked}: {failure}"
            )
            return 1
        self._print(
            f"{self._mark(Outcome.PASSED)} all {checks} {_plural(checks, 'check')} "
            f"passed{not_checked}: {success}"
        )
        return 0


def _plural(count: int, word: str) -> str:
    return word if count == 1 else f"{word}s"


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _quoted_list(names: Sequence[str]) -> str:
    shown = ", ".join(_quoted(name) for name in names[:_KEYS_LISTED_MAX])
    return shown + (", ..." if len(names) > _KEYS_LISTED_MAX else "")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Where to look and with what, from the command line (and the env file)."""

    namespace: str | None
    kubeconfig: str | None
    csms: CsmsClientConfig | None
    """None: no CSMS location was given, so only the Kubernetes checks run."""
    environment: CsmsEnvironment
    credentials_dir: str | None
    metadata_url: str | None
    plain: bool


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """Like `dew-csi csms`: options, then the --env-file, then the environment. Unlike it, a
    project id is not required here: the credentials may carry one (nodePublishSecretRef
    `project_id`, the ECS metadata service), and a missing one is a failed check; and no CSMS
    location only leaves the CSMS checks out."""
    environment = environment_from_args(args, environ)
    config: CsmsClientConfig | None
    try:
        config = csms_config_from_args(
            args,
            environment,
            # A check answers quickly: one retry, a short budget.
            retry=RetryPolicy(max_attempts=2, base_delay=0.2, max_delay=1.0, deadline=5.0),
            read_timeout=10.0,
        )
    except NoCsmsLocation:
        config = None
    metadata_url = getattr(args, "metadata_url", None) or DEFAULT_METADATA_URL
    return Settings(
        namespace=getattr(args, "namespace", None) or None,
        kubeconfig=getattr(args, "kubeconfig", None) or None,
        csms=config,
        environment=environment,
        credentials_dir=getattr(args, "credentials_dir", None) or None,
        metadata_url=None if metadata_url.lower() == "none" else metadata_url,
        plain=bool(getattr(args, "plain", False)),
    )


class _Named(CredentialsProvider):
    """A source whose credentials name it as the user configured it (`--credentials-dir DIR`,
    the metadata service's URL), for the report."""

    def __init__(self, source: CredentialsProvider, name: str) -> None:
        self._source = source
        self.name = name

    async def get(self) -> Credentials:
        return dataclasses.replace(await self._source.get(), source=self.name)

    async def aclose(self) -> None:
        await self._source.aclose()


def default_credentials(settings: Settings) -> CredentialsChain:
    """The provider's default chain (`csms.default_chain`), read from the merged environment:
    environment (or --env-file), then the credentials directory, then the ECS metadata service.
    Each names itself exactly, so the report says where the AK/SK really came from."""
    providers: list[CredentialsProvider] = [EnvCredentialsProvider(settings.environment)]
    if settings.credentials_dir is not None:
        providers.append(
            _Named(
                FileCredentialsProvider(settings.credentials_dir),
                f"--credentials-dir {settings.credentials_dir}",
            )
        )
    if settings.metadata_url is not None:
        project_id = settings.csms.project_id if settings.csms is not None else None
        providers.append(
            _Named(
                MetadataCredentialsProvider(base_url=settings.metadata_url, project_id=project_id),
                f"the node's agency via the ECS metadata service at {settings.metadata_url}",
            )
        )
    return CredentialsChain(providers)


# --------------------------------------------------------------------------- the checks


class Stop(Exception):
    """The remaining checks cannot run (the Kubernetes API failed); already reported."""


@dataclass(frozen=True)
class _Access:
    """Credentials that resolved, and the project they read."""

    credentials: Credentials
    project_id: str


@dataclass(frozen=True)
class CsmsSide:
    """The CSMS endpoint and the default credentials the CSMS checks use."""

    client: CsmsClient
    credentials: CredentialsProvider
    config: CsmsClientConfig


class Checker:
    """Runs the checks against one Kubernetes API and one CSMS endpoint, reporting each. Without
    a CSMS endpoint (`csms` None) only the Kubernetes checks run; the others are reported as
    not checked."""

    def __init__(self, report: Report, client: kube.Kube, csms: CsmsSide | None) -> None:
        self._report = report
        self._kube = client
        self._csms = csms
        self._csms_skipped = False
        self._default_access: _Access | str | None = None
        self._reads: dict[tuple[str, str, str], SecretVersion | mount.MountError] = {}
        self._blocked: dict[str, mount.MountError] = {}

    # ---- entry points -----------------------------------------------------------------

    async def check_pod(self, name: str, namespace: str) -> int:
        report = self._report
        where = f"{namespace}/{name}"
        report.heading(f"Pod {where}")
        success = f"the secrets of pod {where} would mount"
        failure = f"the secrets of pod {where} would not mount"
        try:
            pod = await self._find(kube.POD, name, namespace)
            if pod is None:
                report.failed(f'pod "{name}" not found in namespace "{namespace}"')
                return self._summary(success, failure)
            spec = pod.get("spec") or {}
            account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
            report.passed(f'pod {where} exists; it runs as ServiceAccount "{account}"')
            volumes = [
                volume
                for volume in spec.get("volumes") or []
                if isinstance(volume, Mapping)
                and isinstance(volume.get("csi"), Mapping)
                and volume["csi"].get("driver") == DRIVER_NAME
            ]
            if not volumes:
                report.failed(
                    f"the pod has no inline CSI volume of driver {DRIVER_NAME}, so no secret "
                    f"would be mounted: add a csi volume with driver {DRIVER_NAME}, readOnly: "
                    f"true and volumeAttributes.secretProviderClass"
                )
                return self._summary(success, failure)
            names = ", ".join(_quoted(str(v.get("name"))) for v in volumes)
            report.passed(
                f"{len(volumes)} CSI {_plural(len(volumes), 'volume')} of driver "
                f"{DRIVER_NAME}: {names}"
            )
            for volume in volumes:
                await self._volume(volume, namespace, account)
        except Stop:
            pass
        return self._summary(
            success,
            failure,
            kubernetes_only=f"Kubernetes is ready to mount the secrets of pod {where}",
        )

    async def check_spc(self, name: str, namespace: str, service_account: str | None) -> int:
        report = self._report
        where = f"{namespace}/{name}"
        report.heading(f"SecretProviderClass {where}")
        success = f"SecretProviderClass {where} is ready to mount"
        failure = f"SecretProviderClass {where} would not mount"
        try:
            spc_object = await self._find(kube.SECRET_PROVIDER_CLASS, name, namespace)
            if spc_object is None:
                report.failed(f'SecretProviderClass "{name}" not found in namespace "{namespace}"')
                return self._summary(success, failure)
            report.passed(f"SecretProviderClass {where} exists")
            parsed = self._validate(spc_object)
            if parsed is None:
                report.not_checked(
                    "ServiceAccount, credentials and CSMS checks: they need a valid "
                    "SecretProviderClass"
                )
                return self._summary(success, failure)
            if service_account is None:
                report.not_checked(
                    "the ServiceAccount whitelist: pass --service-account NAME to check it"
                )
            else:
                await self._whitelist(parsed.objects, namespace, service_account)
            if self._csms is None:
                self._skip_csms(parsed.objects, credentials_checked=False)
            else:
                await self._csms_checks(parsed, await self._resolve_default(self._csms))
        except Stop:
            pass
        return self._summary(
            success,
            failure,
            kubernetes_only=f"SecretProviderClass {where} is ready as far as Kubernetes goes",
        )

    def _summary(self, success: str, failure: str, kubernetes_only: str | None = None) -> int:
        if self._csms_skipped and kubernetes_only is not None:
            success = f"{kubernetes_only}; CSMS was not checked"
        return self._report.summary(success, failure)

    def _skip_csms(self, objects: Sequence[spc.SecretObject], *, credentials_checked: bool) -> None:
        """Say which checks did not run for want of a CSMS location, and how to run them."""
        self._csms_skipped = True
        names = [obj.object_name for obj in objects]
        what = "CSMS checks" if credentials_checked else "credentials and CSMS checks"
        jmes_path = ", jmesPath matches" if any(o.jmes_path for o in objects) else ""
        self._report.not_checked(
            f"{what} of {_plural(len(names), 'secret')} {_quoted_list(names)} (secret and "
            f"version exist{jmes_path}): no CSMS location was given; pass --region REGION or "
            f"--endpoint URL (or --env-file FILE with CSMS_ENDPOINT) to check them"
        )

    # ---- Kubernetes ---------------------------------------------------------------------

    async def _find(
        self, resource: kube.Resource, name: str, namespace: str
    ) -> kube.KubeObject | None:
        try:
            return await self._kube.find(resource, name, namespace)
        except kube.KubeError as error:
            self._report.failed(
                f"cannot read {resource.describe(name, namespace)} from the Kubernetes API: "
                f"{error.message}"
            )
            raise Stop from None

    # ---- one pod volume -----------------------------------------------------------------

    async def _volume(self, volume: Mapping[str, Any], namespace: str, account: str) -> None:
        report = self._report
        csi: Mapping[str, Any] = volume["csi"]
        attributes = csi.get("volumeAttributes") or {}
        spc_name = (
            attributes.get(SECRET_PROVIDER_CLASS) if isinstance(attributes, Mapping) else None
        )
        report.heading(f"Volume {_quoted(str(volume.get('name')))}")
        spoofed = sorted(str(key) for key in attributes if key in KUBELET_OWNED)
        if spoofed:
            # Kubelet's pod info wins over these, and so does the driver's: the checks below
            # use the pod's own namespace and ServiceAccount, exactly as the mount does.
            report.passed(
                f"volumeAttributes {_quoted_list(spoofed)} are ignored: kubelet sets them from "
                f'the pod itself (namespace "{namespace}", ServiceAccount "{account}")'
            )
        if csi.get("readOnly") is True:
            report.passed("the volume is readOnly: true")
        else:
            report.failed(
                'the volume is not readOnly: true; the driver refuses it ("Readonly is not '
                "true in request\"): set readOnly: true on the pod's CSI volume"
            )
        if not isinstance(spc_name, str) or not spc_name:
            report.failed(
                "the volume has no secretProviderClass attribute: set "
                "volumeAttributes.secretProviderClass on the pod's CSI volume"
            )
            report.not_checked("the rest of this volume: it names no SecretProviderClass")
            return
        spc_object = await self._find(kube.SECRET_PROVIDER_CLASS, spc_name, namespace)
        if spc_object is None:
            report.failed(
                f'SecretProviderClass "{spc_name}" not found in namespace "{namespace}"; create '
                f"it in the pod's namespace"
            )
            report.not_checked("the rest of this volume: it needs its SecretProviderClass")
            return
        report.passed(f"SecretProviderClass {namespace}/{spc_name} exists")
        parsed = self._validate(spc_object)
        if parsed is None:
            report.not_checked(
                "ServiceAccount, credentials and CSMS checks of this volume: they need a valid "
                "SecretProviderClass"
            )
            return
        await self._whitelist(parsed.objects, namespace, account)
        access = await self._volume_access(csi, namespace)
        if self._csms is None:
            if access is not None or _secret_ref_name(csi) is None:
                # (A nodePublishSecretRef that failed has said what was not checked.)
                self._skip_csms(parsed.objects, credentials_checked=access is not None)
            return
        await self._csms_checks(parsed, access)

    # ---- the SecretProviderClass --------------------------------------------------------

    def _validate(self, spc_object: Mapping[str, Any]) -> spc.ParsedSpc | None:
        """Provider, validity and secretObjects lines; the parsed SPC, or None when the objects
        cannot be used. A secretObjects problem (a driver matter) leaves the objects usable."""
        report = self._report
        try:
            parsed = spc.validate_spc(spc_object)
        except spc.SpcValidationError as error:
            if error.rule in (
                spc.Rule.PROVIDER_UNSUPPORTED,
                spc.Rule.SPC_INVALID,
                spc.Rule.NAME_MISSING,
            ):
                report.failed(str(error))
                return None
            report.passed(f'its provider is "{PROVIDER_NAME}"')
            objects = _objects_only(spc_object, error.spc_name)
            if objects is None:
                report.failed(str(error))
                return None
            report.passed(_describe_objects(error.spc_name, objects))
            report.failed(str(error))
            return spc.ParsedSpc(
                name=error.spc_name, namespace=None, provider=PROVIDER_NAME, objects=objects
            )
        report.passed(f'its provider is "{PROVIDER_NAME}"')
        report.passed(_describe_objects(parsed.name, parsed.objects))
        for synced in parsed.secret_objects:
            keys = ", ".join(
                f"{_quoted(item.key)} from file {_quoted(item.object_name)}" for item in synced.data
            )
            report.passed(
                f"secretObjects {_quoted(synced.secret_name)} ({synced.type}) takes its keys from "
                f"files the SecretProviderClass mounts: {keys}"
            )
        return parsed

    # ---- the ServiceAccount whitelist ----------------------------------------------------

    async def _whitelist(
        self, objects: Sequence[spc.SecretObject], namespace: str, account: str
    ) -> None:
        report = self._report
        service_account = await self._find(kube.SERVICE_ACCOUNT, account, namespace)
        try:
            mount.allowed_secrets(service_account, namespace, account)
        except mount.MountError as error:
            report.failed(error.message)
            return
        for obj in objects:
            try:
                mount.authorise([obj], service_account, namespace, account)
            except mount.MountError as error:
                report.failed(error.message)
                continue
            report.passed(
                f'ServiceAccount "{namespace}/{account}" allows secret '
                f"{_quoted(obj.object_name)} ({mount.WHITELIST_ANNOTATION})"
            )

    # ---- credentials ---------------------------------------------------------------------

    async def _volume_access(self, csi: Mapping[str, Any], namespace: str) -> _Access | None:
        secret_name = _secret_ref_name(csi)
        if secret_name is None:
            if self._csms is None:
                return None  # the default credentials are not Kubernetes: not checked
            return await self._resolve_default(
                self._csms,
                "credentials: the volume has no nodePublishSecretRef, so dew-provider uses its "
                "own; this check uses those from ",
            )
        report = self._report
        where = f'nodePublishSecretRef Secret "{namespace}/{secret_name}"'
        secret = await self._find(kube.SECRET, str(secret_name), namespace)
        if secret is None:
            report.failed(
                f"{where} does not exist; kubelet cannot publish the volume without it: create "
                f"it with keys ak and sk (and optionally security_token, project_id)"
            )
            report.not_checked("CSMS checks of this volume: no usable credentials")
            return None
        data: dict[str, str] = {}
        for key, encoded in (secret.get("data") or {}).items():
            try:
                data[str(key)] = base64.b64decode(str(encoded), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                report.failed(f"{where}: the value of key {_quoted(str(key))} is not UTF-8 text")
                report.not_checked("CSMS checks of this volume: no usable credentials")
                return None
        try:
            credentials = credentials_from_node_publish_secrets(data)
        except CredentialsError as error:
            report.failed(f"{where}: CSMS credentials: {error}")
            report.not_checked("CSMS checks of this volume: no usable credentials")
            return None
        if self._csms is None:
            report.passed(f"credentials: {where} holds ak and sk (AK {credentials.ak})")
            return _Access(credentials, credentials.project_id or "")
        return self._with_project(
            credentials, self._csms.config, f"credentials: {where} holds ak and sk"
        )

    async def _resolve_default(
        self, csms: CsmsSide, lead: str = "credentials from "
    ) -> _Access | None:
        """This command's default credentials, resolved once and reported on every use."""
        if self._default_access is None:
            try:
                credentials = await csms.credentials.get()
            except CredentialsError as error:
                self._default_access = (
                    f"CSMS credentials: {error}; set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK "
                    f"(or --env-file), or pass --credentials-dir or --metadata-url"
                )
            else:
                project_id = credentials.project_id or csms.config.project_id
                self._default_access = (
                    _Access(credentials, project_id) if project_id else _no_project_id(credentials)
                )
        if isinstance(self._default_access, str):
            self._report.failed(self._default_access)
            self._report.not_checked("CSMS checks: no usable credentials")
            return None
        access = self._default_access
        self._report.passed(f"{lead}{access.credentials.source} ({_identifiers(access)})")
        return access

    def _with_project(
        self, credentials: Credentials, config: CsmsClientConfig, lead: str
    ) -> _Access | None:
        project_id = credentials.project_id or config.project_id
        if not project_id:
            self._report.failed(_no_project_id(credentials))
            self._report.not_checked("CSMS checks of this volume: no usable credentials")
            return None
        access = _Access(credentials, project_id)
        self._report.passed(f"{lead} ({_identifiers(access)})")
        return access

    # ---- CSMS ----------------------------------------------------------------------------

    async def _csms_checks(self, parsed: spc.ParsedSpc, access: _Access | None) -> None:
        if access is None or self._csms is None:
            return
        report = self._report
        identity = access.credentials.identity
        for position, obj in enumerate(parsed.objects):
            blocked = self._blocked.get(identity)
            if blocked is not None:
                rest = [o.object_name for o in parsed.objects[position:]]
                report.not_checked(
                    f"CSMS checks of {_plural(len(rest), 'secret')} {_quoted_list(rest)}: CSMS "
                    f"cannot be read with these credentials (see above)"
                )
                return
            outcome = await self._read(self._csms.client, obj, access)
            if isinstance(outcome, mount.MountError):
                report.failed(outcome.message)
                if obj.jmes_path:
                    report.not_checked(
                        f"jmesPath of secret {_quoted(obj.object_name)}: the secret cannot be read"
                    )
                if outcome.status in _CSMS_BLOCKING:
                    self._blocked[identity] = outcome
                continue
            report.passed(_describe_read(obj, outcome))
            self._jmes_path(obj, outcome)

    async def _read(
        self, csms: CsmsClient, obj: spc.SecretObject, access: _Access
    ) -> SecretVersion | mount.MountError:
        key = (access.credentials.identity, obj.object_name, obj.object_version)
        known = self._reads.get(key)
        if known is not None:
            return known
        credentials = access.credentials.with_project_id(access.project_id)
        try:
            outcome: SecretVersion | mount.MountError = await csms.get_secret_version(
                obj.object_name, obj.object_version, credentials=credentials
            )
        except CsmsError as error:
            # The provider's own translation, so the message is the one a mount would fail with.
            outcome = mount.mount_error_from_csms(obj, error)
        self._reads[key] = outcome
        return outcome

    def _jmes_path(self, obj: spc.SecretObject, version: SecretVersion) -> None:
        report = self._report
        for entry in obj.jmes_path:
            single = dataclasses.replace(obj, jmes_path=(entry,))
            try:
                mount.render_object(single, version, 0o644)
            except mount.MountError as error:
                if error.status is mount.Status.NOT_FOUND:
                    report.failed(error.message + _top_level_keys(version.value))
                    continue
                report.failed(error.message)  # not a JSON object: no path can match
                return
            report.passed(
                f"jmesPath {_quoted(entry.path)} matches a value in secret "
                f"{_quoted(obj.object_name)} {version.version_id} (file "
                f"{_quoted(entry.object_alias)})"
            )


def _secret_ref_name(csi: Mapping[str, Any]) -> str | None:
    """The name of the volume's nodePublishSecretRef Secret, if it has one."""
    reference = csi.get("nodePublishSecretRef")
    name = reference.get("name") if isinstance(reference, Mapping) else None
    return str(name) if name else None


def _objects_only(
    spc_object: Mapping[str, Any], spc_name: str
) -> tuple[spc.SecretObject, ...] | None:
    """The objects of an SPC whose only problem is elsewhere (secretObjects), else None."""
    spec = spc_object.get("spec")
    parameters = spec.get("parameters") if isinstance(spec, Mapping) else None
    objects_yaml = parameters.get("objects") if isinstance(parameters, Mapping) else None
    if not isinstance(objects_yaml, str):
        return None
    try:
        return spc.parse_objects(spc_name, objects_yaml)
    except spc.SpcValidationError:
        return None


def _describe_objects(spc_name: str, objects: Sequence[spc.SecretObject]) -> str:
    files = [name for obj in objects for name in obj.file_names]
    return (
        f"SecretProviderClass {_quoted(spc_name)} is valid: {len(objects)} "
        f"{_plural(len(objects), 'object')} ({_quoted_list([o.object_name for o in objects])}), "
        f"{len(files)} {_plural(len(files), 'file')} ({_quoted_list(files)})"
    )


def _identifiers(access: _Access) -> str:
    """What identifies credentials, never the secret parts: the AK and the project."""
    credentials = access.credentials
    kind = ", temporary" if credentials.is_temporary else ""
    return f"AK {credentials.ak}{kind}, project {access.project_id}"


def _no_project_id(credentials: Credentials) -> str:
    return (
        f"the credentials from {credentials.source} (AK {credentials.ak}) carry no project id: "
        f"pass --project-id, set {ENV_PROJECT_ID}, or add project_id next to the AK/SK"
    )


def _describe_read(obj: spc.SecretObject, version: SecretVersion) -> str:
    name = _quoted(obj.object_name)
    file = _quoted(obj.file_name)
    if obj.is_latest:
        return f"secret {name} exists in CSMS; latest is version {version.version_id} (file {file})"
    return f"secret {name} version {version.version_id} exists in CSMS (file {file})"


def _top_level_keys(value: bytes) -> str:
    """The names (never the values) of a JSON secret's top-level keys, to spot a typo."""
    try:
        document = json.loads(value)
    except ValueError:
        return ""
    if not isinstance(document, dict):
        return ""
    if not document:
        return "; the secret's JSON object has no keys"
    return f"; the secret's top-level keys are {_quoted_list(sorted(document))}"


# --------------------------------------------------------------------------- command line

Action = Callable[[Checker, str], Awaitable[int]]


def _quiet_library_logs(verbose: bool) -> None:
    """Retry warnings go to stderr only with --verbose; never Python's last-resort handler."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        for noisy in ("httpx", "httpx2", "httpcore", "hpack"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        return
    logger = logging.getLogger("dew_csi")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


async def _run_checks(settings: Settings, action: Action, out: TextIO) -> int:
    try:
        client = kube.Kube.from_options(settings.kubeconfig)
    except kube.KubeConfigError as error:
        raise UsageError(str(error)) from None
    try:
        namespace = settings.namespace or client.config.namespace or "default"
        report = Report(out, plain=settings.plain)
        if settings.csms is None:
            return await action(Checker(report, client, None), namespace)
        credentials = default_credentials(settings)
        try:
            try:
                csms = CsmsClient(credentials, settings.csms)
            except ValueError as error:
                raise UsageError(str(error)) from None
            try:
                checker = Checker(report, client, CsmsSide(csms, credentials, settings.csms))
                return await action(checker, namespace)
            finally:
                await csms.aclose()
        finally:
            await credentials.aclose()
    finally:
        await client.close()


def _run(args: argparse.Namespace, action: Action) -> int:
    _quiet_library_logs(bool(getattr(args, "verbose", False)))
    try:
        settings = settings_from_args(args)
        return asyncio.run(_run_checks(settings, action, sys.stdout))
    except UsageError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2


def pod_from_args(args: argparse.Namespace) -> int:
    """`dew-csi check pod NAME [-n NS]`."""
    name = str(args.name)
    return _run(args, lambda checker, namespace: checker.check_pod(name, namespace))


def spc_from_args(args: argparse.Namespace) -> int:
    """`dew-csi check spc NAME [-n NS] [--service-account SA]`."""
    name = str(args.name)
    account = getattr(args, "service_account", None) or None
    return _run(args, lambda checker, namespace: checker.check_spc(name, namespace, account))
