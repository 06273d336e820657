"""The API emulator's validating admission: it calls the webhooks of the stored
ValidatingWebhookConfigurations (admissionregistration.k8s.io/v1) for the creates and updates
their rules match, and refuses a write the way the real kube-apiserver does.

What is emulated:
- rules: `apiGroups`, `apiVersions`, `resources` (with `*`, `*/*`, `pods/status`, `*/scale`),
  `operations` and `scope`, matched as k8s.io/apiserver's rule matcher does; `matchPolicy`
  Equivalent (the default) also matches a rule written for another served version of the same
  resource and sends the object in that version; `namespaceSelector` and `objectSelector`;
- the call: a real AdmissionReview over HTTPS to `clientConfig.url` (with `?timeout=Ns`, as the
  real server appends), verified against `caBundle` (base64 PEM) or the system roots,
  `timeoutSeconds` (default 10, at most 30), the first of `admissionReviewVersions` that is `v1` or
  `v1beta1`; all matching webhooks in parallel, the first refusal (in configuration order) wins;
- the answer: `allowed: false` becomes the real "admission webhook "NAME" denied the request: MSG"
  Status with the webhook's code (at least 400), reason and details; a failed call (connection,
  TLS, timeout, HTTP error, an invalid AdmissionReview answer) is a 500 InternalError under
  `failurePolicy: Fail` (the default) and is logged and skipped under `Ignore`; answers'
  `warnings` reach the client as Warning headers, as kubectl prints them;
- dry run: the review says `dryRun: true`; a webhook whose `sideEffects` is Unknown or Some
  refuses the request with the real "does not support dry run" error.

Loose or left out: `clientConfig.service` cannot be reached from the sandbox (there are no
Services) and counts as a failed call; configurations are not validated when written;
`sideEffects` and `admissionReviewVersions` are only read as above; DELETE and CONNECT rules are
not called (the webhooks here only check creates and updates); mutating webhooks are not called.

The store is synchronous and its writes are not split: `Admission.admit` previews the write
(the store's own dry-run, so the webhooks see exactly what would be stored: defaults, patches
applied, generated name), awaits the webhooks without holding anything, then commits only if the
object has not changed meanwhile, and otherwise starts over, as the real server's guaranteed
update does. Writes no configuration matches take the direct path, untouched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import json
import logging
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from dew_csi.sandbox.apistore import (
    ApiError,
    LabelSelector,
    Obj,
    ResourceType,
    Result,
    SelectorError,
    Store,
    WriteOptions,
    as_dict,
    as_list,
    conflict,
    labels_of,
    meta_of,
)

log = logging.getLogger(__name__)

WEBHOOK_CONFIGURATIONS: Final = ("admissionregistration.k8s.io", "validatingwebhookconfigurations")
# The real server never sends its own admission configuration objects to webhooks.
EXEMPT_GROUPS: Final = frozenset({"admissionregistration.k8s.io"})
NAMESPACES: Final = ("", "namespaces")
ADMISSION_GROUP: Final = "admission.k8s.io"
DEFAULT_TIMEOUT_SECONDS: Final = 10
MAX_TIMEOUT_SECONDS: Final = 30
MAX_ATTEMPTS: Final = 5  # previews redone because the object changed while webhooks decided
USER_INFO: Final = {
    "username": "system:admin",
    "groups": ["system:masters", "system:authenticated"],
}
_ANSWER_LIMIT: Final = 8 * 1024 * 1024
_SHOWN_BODY: Final = 200

# write(options, name): runs the store write; `name` is the name the preview settled on (a
# generateName create must store the name the webhooks saw) or None.
Write = Callable[[WriteOptions, str | None], Result]


# ------------------------------------------------------------------------ configurations


@dataclass(frozen=True)
class Webhook:
    """One entry of a ValidatingWebhookConfiguration's `webhooks`, as the caller uses it."""

    name: str
    rules: tuple[Obj, ...]
    url: str | None
    has_service: bool
    ca_bundle: str
    fail_closed: bool
    equivalent: bool
    timeout: float
    dry_run_unsupported: bool
    review_version: str | None  # None: no version this server speaks
    namespace_selector: object
    object_selector: object


def webhooks_of(configuration: Obj) -> list[Webhook]:
    """The webhooks of one configuration, read loosely (the emulator does not validate them)."""
    hooks = []
    for entry in as_list(configuration.get("webhooks")):
        if not isinstance(entry, dict):
            continue
        client = as_dict(entry.get("clientConfig"))
        url = client.get("url")
        timeout = entry.get("timeoutSeconds")
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1:
            timeout = DEFAULT_TIMEOUT_SECONDS
        versions = entry.get("admissionReviewVersions")
        review_version: str | None = "v1"
        if isinstance(versions, list) and versions:
            review_version = next((v for v in versions if v in ("v1", "v1beta1")), None)
        hooks.append(
            Webhook(
                name=str(entry.get("name") or meta_of(configuration).get("name") or ""),
                rules=tuple(r for r in as_list(entry.get("rules")) if isinstance(r, dict)),
                url=url if isinstance(url, str) and url else None,
                has_service=isinstance(client.get("service"), dict),
                ca_bundle=str(client.get("caBundle") or ""),
                fail_closed=entry.get("failurePolicy") != "Ignore",
                equivalent=entry.get("matchPolicy") != "Exact",
                timeout=float(min(timeout, MAX_TIMEOUT_SECONDS)),
                dry_run_unsupported=entry.get("sideEffects") in ("Unknown", "Some"),
                review_version=review_version,
                namespace_selector=entry.get("namespaceSelector"),
                object_selector=entry.get("objectSelector"),
            )
        )
    return hooks


@dataclass(frozen=True)
class Request:
    """One write as admission sees it."""

    rt: ResourceType
    version: str
    namespace: str | None
    name: str
    subresource: str
    operation: str  # CREATE | UPDATE
    dry_run: bool
    manager: str


def _listed(values: object, wanted: str) -> bool:
    return isinstance(values, list) and ("*" in values or wanted in values)


def rule_matches(rule: Obj, request: Request, version: str) -> bool:
    """k8s.io/apiserver's rule matcher for one rule and one version of the request."""
    rt = request.rt
    if not (
        _listed(rule.get("operations"), request.operation)
        and _listed(rule.get("apiGroups"), rt.group)
        and _listed(rule.get("apiVersions"), version)
    ):
        return False
    resources = rule.get("resources")
    if not isinstance(resources, list):
        return False
    for text in resources:
        resource, _, sub = str(text).partition("/")
        if resource in ("*", rt.plural) and sub in ("*", request.subresource):
            break
    else:
        return False
    scope = rule.get("scope") or "*"
    is_namespace = rt.key == NAMESPACES
    if scope == "Namespaced":
        return not is_namespace and bool(request.namespace)
    if scope == "Cluster":
        return is_namespace or not request.namespace
    return True


def matched_version(hook: Webhook, request: Request) -> str | None:
    """The version `hook` is called with: the request's own when a rule matches it; with
    matchPolicy Equivalent, else the first other served version of the resource one matches."""
    versions = [request.version]
    if hook.equivalent:
        versions += [v for v in request.rt.versions if v != request.version]
    for version in versions:
        if any(rule_matches(rule, request, version) for rule in hook.rules):
            return version
    return None


# ------------------------------------------------------------------------ errors


class CallFailed(Exception):
    """Calling a webhook failed; its failurePolicy decides what that means."""


def denied(hook: str, status: object) -> ApiError:
    """The real server's refusal (k8s.io/apiserver webhook errors.ToStatusErr)."""
    result = as_dict(status)
    code = result.get("code")
    if not isinstance(code, int) or isinstance(code, bool) or code < 400:
        code = 400
    message = result.get("message") if isinstance(result.get("message"), str) else ""
    reason = result.get("reason") if isinstance(result.get("reason"), str) else ""
    denied_by = f"admission webhook {json.dumps(hook)} denied the request"
    if message:
        text = f"{denied_by}: {message}"
    elif reason:
        text = f"{denied_by}: {reason}"
    else:
        text = f"{denied_by} without explanation"
    details = result.get("details")
    return ApiError(code, str(reason), text, details if isinstance(details, dict) else None)


def call_failed(hook: str, why: str) -> ApiError:
    """Fail closed: the real server's 500 InternalError wrapping ErrCallingWebhook."""
    text = f"failed calling webhook {json.dumps(hook)}: {why}"
    return ApiError(
        500, "InternalError", f"Internal error occurred: {text}", {"causes": [{"message": text}]}
    )


def dry_run_unsupported(hook: str) -> ApiError:
    return ApiError(
        400, "BadRequest", f"admission webhook {json.dumps(hook)} does not support dry run"
    )


# ------------------------------------------------------------------------ the review


def _group_version(group: str, version: str) -> Obj:
    return {"group": group, "version": version}


def build_review(
    uid: str, request: Request, version: str, obj: Obj, old: Obj | None, review_version: str
) -> Obj:
    """A real AdmissionReview request for `request`, with the objects in `version`."""
    rt = request.rt
    body: Obj = {
        "uid": uid,
        "kind": {**_group_version(rt.group, version), "kind": rt.kind},
        "resource": {**_group_version(rt.group, version), "resource": rt.plural},
        "requestKind": {**_group_version(rt.group, request.version), "kind": rt.kind},
        "requestResource": {**_group_version(rt.group, request.version), "resource": rt.plural},
        "name": request.name,
        "operation": request.operation,
        "userInfo": USER_INFO,
        "object": Store.view(rt, obj, version),
        "oldObject": Store.view(rt, old, version) if old is not None else None,
        "dryRun": request.dry_run,
        "options": {
            "kind": "CreateOptions" if request.operation == "CREATE" else "UpdateOptions",
            "apiVersion": "meta.k8s.io/v1",
            **({"dryRun": ["All"]} if request.dry_run else {}),
            **({"fieldManager": request.manager} if request.manager else {}),
        },
    }
    if request.subresource:
        body["subResource"] = body["requestSubResource"] = request.subresource
    if request.namespace:
        body["namespace"] = request.namespace
    elif rt.key == NAMESPACES:
        body["namespace"] = request.name  # as the real server sets it for Namespace objects
    return {
        "apiVersion": f"{ADMISSION_GROUP}/{review_version}",
        "kind": "AdmissionReview",
        "request": body,
    }


@dataclass(frozen=True)
class Answer:
    allowed: bool
    status: object
    warnings: tuple[str, ...]


def read_answer(uid: str, review_version: str, raw: bytes) -> Answer:
    """A webhook's AdmissionReview answer; `CallFailed` when it is not a valid one."""
    invalid = "received invalid webhook response: "
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise CallFailed(f"{invalid}the response is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise CallFailed(f"{invalid}expected a JSON object")
    expected = f"{ADMISSION_GROUP}/{review_version}"
    if document.get("apiVersion") != expected or document.get("kind") != "AdmissionReview":
        raise CallFailed(
            f"{invalid}expected webhook response of {expected}, Kind=AdmissionReview, got "
            f"{document.get('apiVersion')}, Kind={document.get('kind')}"
        )
    response = document.get("response")
    if not isinstance(response, dict):
        raise CallFailed(f"{invalid}webhook response was absent")
    if response.get("uid") != uid:
        got = json.dumps(response.get("uid"))
        raise CallFailed(f"{invalid}expected response.uid={json.dumps(uid)}, got {got}")
    allowed = response.get("allowed", False)
    if not isinstance(allowed, bool):
        raise CallFailed(f"{invalid}response.allowed must be true or false")
    warnings = tuple(w for w in as_list(response.get("warnings")) if isinstance(w, str) and w)
    return Answer(allowed, response.get("status"), warnings)


def _with_timeout(url: str, seconds: float) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=f"{query}timeout={int(seconds)}s"))


def _connect_problem(url: str, error: aiohttp.ClientConnectorError) -> str:
    os_error = error.os_error
    address = f"{error.host}:{error.port}"
    if (
        isinstance(os_error, ConnectionRefusedError)
        or getattr(os_error, "errno", None) == errno.ECONNREFUSED
    ):
        return f'Post "{url}": dial tcp {address}: connect: connection refused'
    return f'Post "{url}": dial tcp {address}: {getattr(os_error, "strerror", None) or error}'


# ------------------------------------------------------------------------ the caller


class Admission:
    """Calls the stored configurations' webhooks; one HTTP session, made on first use."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- matching

    def _configurations(self) -> list[Obj]:
        rt = self.store.registry.get(WEBHOOK_CONFIGURATIONS)
        return list(self.store.objects(rt)) if rt is not None else []

    def candidates(self, request: Request) -> list[tuple[Webhook, str]]:
        """Webhooks whose rules match, with the version each is called with (selectors are
        checked later, on the object)."""
        if request.rt.group in EXEMPT_GROUPS:
            return []
        found = []
        configurations = sorted(self._configurations(), key=lambda c: meta_of(c).get("name", ""))
        for configuration in configurations:
            for hook in webhooks_of(configuration):
                version = matched_version(hook, request)
                if version is not None:
                    found.append((hook, version))
        return found

    def _selected(self, hook: Webhook, request: Request, obj: Obj, old: Obj | None) -> bool:
        """namespaceSelector and objectSelector, as the real server applies them."""
        try:
            object_selector = LabelSelector.from_object(hook.object_selector)
            namespace_selector = LabelSelector.from_object(hook.namespace_selector)
        except SelectorError as error:
            raise CallFailed(f"invalid label selector: {error}") from None
        if object_selector and not (
            object_selector.matches(labels_of(obj))
            or (old is not None and object_selector.matches(labels_of(old)))
        ):
            return False
        if not namespace_selector:
            return True
        if request.rt.key == NAMESPACES and not request.subresource:
            return namespace_selector.matches(labels_of(obj))
        if not request.namespace:
            return True  # cluster-scoped objects are never exempted by namespace
        namespaces = self.store.registry.get(NAMESPACES)
        namespace = self.store.get(namespaces, None, request.namespace) if namespaces else None
        return namespace_selector.matches(labels_of(namespace) if namespace else {})

    # -- the write

    async def admit(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str | None,
        subresource: str | None,
        options: WriteOptions,
        write: Write,
    ) -> Result:
        """Run `write` (a create when `name` is None) past the matching webhooks: preview it,
        ask them, commit what they saw. Without a matching webhook this is just `write`."""
        if rt.group in EXEMPT_GROUPS or not self._configurations():
            return write(options, None)
        for _attempt in range(MAX_ATTEMPTS):
            current = self.store.get(rt, namespace, name) if name is not None else None
            request = Request(
                rt=rt,
                version=version,
                namespace=namespace if rt.namespaced else None,
                name=name or "",
                subresource=subresource or "",
                operation="CREATE" if current is None else "UPDATE",
                dry_run=options.dry_run,
                manager=options.manager,
            )
            hooks = self.candidates(request)
            if not hooks:
                return write(options, None)
            preview = write(replace(options, dry_run=True), None)
            settled = str(meta_of(preview.obj).get("name") or name or "")
            request = replace(request, name=settled)
            warnings = await self.validate(request, hooks, preview.obj, current)
            if options.dry_run:
                preview.warnings.extend(warnings)
                return preview
            after = self.store.get(rt, namespace, settled)
            if _version_of(after) != _version_of(current):
                continue  # changed while the webhooks decided: decide again on the new state
            result = write(options, settled)
            result.warnings.extend(warnings)
            return result
        raise conflict(rt, name or "")

    async def validate(
        self, request: Request, hooks: list[tuple[Webhook, str]], obj: Obj, old: Obj | None
    ) -> list[str]:
        """Call every selected webhook at once; raise the first refusal in configuration order.
        Returns the warnings of those that allowed."""
        calls = [self._decide(hook, version, request, obj, old) for hook, version in hooks]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        warnings: list[str] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            warnings.extend(outcome)
        return warnings

    async def _decide(
        self, hook: Webhook, version: str, request: Request, obj: Obj, old: Obj | None
    ) -> list[str]:
        try:
            if not self._selected(hook, request, obj, old):
                return []
            if request.dry_run and hook.dry_run_unsupported:
                raise dry_run_unsupported(hook.name)
            answer = await self._call(hook, version, request, obj, old)
        except CallFailed as error:
            if hook.fail_closed:
                log.warning("Failed calling webhook, failing closed %s: %s", hook.name, error)
                raise call_failed(hook.name, str(error)) from None
            log.warning("Failed calling webhook, failing open %s: %s", hook.name, error)
            return []
        if not answer.allowed:
            raise denied(hook.name, answer.status)
        return list(answer.warnings)

    async def _call(
        self, hook: Webhook, version: str, request: Request, obj: Obj, old: Obj | None
    ) -> Answer:
        if hook.url is None:
            if hook.has_service:
                raise CallFailed(
                    "failed to call webhook: clientConfig.service cannot be reached from the "
                    "sandbox API emulator; use clientConfig.url"
                )
            raise CallFailed("failed to call webhook: clientConfig has neither url nor service")
        if hook.review_version is None:
            raise CallFailed(
                "failed to call webhook: none of admissionReviewVersions is v1 or v1beta1"
            )
        url = _with_timeout(hook.url, hook.timeout)
        if urlsplit(url).scheme != "https":
            raise CallFailed(f'failed to call webhook: Post "{url}": the URL must use https')
        uid = str(uuid.uuid4())
        review = build_review(uid, request, version, obj, old, hook.review_version)
        context = self._context(hook.ca_bundle)
        session = self._client()
        try:
            async with session.post(
                url,
                data=json.dumps(review, separators=(",", ":")).encode(),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                ssl=context,
                timeout=aiohttp.ClientTimeout(total=hook.timeout),
            ) as response:
                raw = await response.content.read(_ANSWER_LIMIT + 1)
                status = response.status
        except TimeoutError:
            raise CallFailed(
                f'failed to call webhook: Post "{url}": context deadline exceeded'
            ) from None
        except aiohttp.ClientConnectorCertificateError as error:
            raise CallFailed(
                f'failed to call webhook: Post "{url}": tls: failed to verify certificate: '
                f"{error.certificate_error}"
            ) from None
        except aiohttp.ClientSSLError as error:
            raise CallFailed(f'failed to call webhook: Post "{url}": tls: {error}') from None
        except aiohttp.ClientConnectorError as error:
            raise CallFailed(f"failed to call webhook: {_connect_problem(url, error)}") from None
        except (aiohttp.ClientError, OSError) as error:
            raise CallFailed(f'failed to call webhook: Post "{url}": {error}') from None
        if len(raw) > _ANSWER_LIMIT:
            raise CallFailed("received invalid webhook response: the response is too large")
        if not 200 <= status < 300:
            text = raw.decode("utf-8", "replace").strip()
            shown = text if len(text) <= _SHOWN_BODY else text[: _SHOWN_BODY - 1] + "…"
            raise CallFailed(
                f"failed to call webhook: the server responded with HTTP {status}"
                + (f": {shown}" if shown else "")
            )
        return read_answer(uid, hook.review_version, raw)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    def _context(self, ca_bundle: str) -> ssl.SSLContext:
        """A client TLS context trusting `ca_bundle` (base64 PEM), or the system roots."""
        context = self._contexts.get(ca_bundle)
        if context is not None:
            return context
        if not ca_bundle:
            context = ssl.create_default_context()
        else:
            try:
                pem = base64.b64decode(ca_bundle, validate=True).decode("ascii")
                context = ssl.create_default_context(cadata=pem)
            except (binascii.Error, UnicodeDecodeError, ssl.SSLError, ValueError) as error:
                raise CallFailed(
                    f"failed to call webhook: clientConfig.caBundle is not base64 of PEM "
                    f"certificates: {error}"
                ) from None
        if len(self._contexts) >= 16:
            self._contexts.clear()
        self._contexts[ca_bundle] = context
        return context


def _version_of(obj: Obj | None) -> str | None:
    return None if obj is None else str(meta_of(obj).get("resourceVersion"))


def named(body: Any, name: str | None) -> Any:
    """The create body with `name` set (the name a generateName preview produced), if given."""
    if name is None or not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
        return body
    return {**body, "metadata": {**body["metadata"], "name": name}}
