"""`dew-csi webhook`: the validating admission webhook for SecretProviderClass objects.

The Kubernetes API server POSTs an AdmissionReview (`admission.k8s.io/v1`) to `/validate` for every
SecretProviderClass create and update its ValidatingWebhookConfiguration routes here. The answer:

- provider `cce`: `spc.validate_spc`, the very code dew-provider runs on every mount, so a
  SecretProviderClass the provider would refuse is refused at `kubectl apply` time with the same
  sentence (denied with status code 400 and that sentence as the message);
- a create that would take the cluster past `--max-spcs` SecretProviderClass objects (default 500,
  the add-on's documented limit; objects of every provider count, since the add-on's driver serves
  them all) is denied with status code 403 and reason Forbidden, saying the limit and how many
  exist. The count comes from a watch cache of SecretProviderClass objects in every namespace, so
  answering costs no API call; creates this webhook allowed a moment ago count until the cache
  sees them, so a burst of concurrent creates cannot slip past the limit together. Updates are
  never refused for the limit;
- everything else is allowed: other providers' classes (within the limit), deletes, other kinds,
  subresources, updates that leave `spec` unchanged (relabelling an object that predates the
  webhook) and updates of an object being deleted (removing its last finalizer must never be
  blocked).

The validation denial carries no `reason`, so kubectl prints it as a real cluster shows a webhook
refusal: `Error from server: error when creating "x.yaml": admission webhook "NAME" denied the
request: SecretProviderClass "x": object "y": ...`.

A body that is not an AdmissionReview gets HTTP 400 with a plain-text reason. Every decision is
logged with the object's namespace and name, the operation and the rule; SecretProviderClass
objects hold secret names, never values, and the messages quote names and keys only.

Decoding the review and validating the object run in one worker thread, never on the event loop:
`parameters.objects` is bounded (spc.MAX_OBJECTS_BYTES and the bounded scan refuse a hostile one
before it is loaded), and what work the bounds allow delays only the reviews queued behind it,
not `/healthz` or the answers already decided. Only the count, which reads the watch cache, runs
on the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import ssl
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from dew_csi import kube
from dew_csi.logs import fields, setup_logging
from dew_csi.service import until_terminated
from dew_csi.spc import Rule, SpcValidationError, is_ours, validate_spc

log = logging.getLogger(__name__)

ADMISSION_GROUP: Final = "admission.k8s.io"
REVIEW_VERSIONS: Final = (f"{ADMISSION_GROUP}/v1", f"{ADMISSION_GROUP}/v1beta1")
DEFAULT_MAX_SPCS: Final = 500
SPC_KIND: Final = "SecretProviderClass"
SPC_RESOURCE: Final = "secretproviderclasses"
# The API server sends at most two objects of up to 3 MiB each (object and oldObject).
MAX_REVIEW_BYTES: Final = 8 * 1024 * 1024
# How long a create this webhook allowed counts towards the limit before the watch cache shows
# it; a create refused later (by another webhook or by the API server) stops counting then.
RESERVATION_SECONDS: Final = 10.0
SYNC_TIMEOUT_SECONDS: Final = 60.0
OPERATIONS: Final = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
_SHOWN_MAX: Final = 64


# ------------------------------------------------------------------------- the review


class ReviewError(ValueError):
    """The body is not an AdmissionReview this webhook can answer (HTTP 400)."""


@dataclass(frozen=True)
class Review:
    """The parts of an AdmissionReview request the decision needs."""

    api_version: str
    uid: str
    operation: str
    group: str
    kind: str
    sub_resource: str
    namespace: str
    name: str
    dry_run: bool
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None

    @property
    def is_spc(self) -> bool:
        return self.group == kube.SPC_GROUP and self.kind == SPC_KIND

    @property
    def subject(self) -> str:
        """`namespace/name` for logs."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _show(value: object) -> str:
    """A string from the request, quoted and cut short, or its JSON kind."""
    if not isinstance(value, str):
        return _json_kind(value)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 2] + '…"'


def _field(mapping: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = mapping.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        if value is None:
            raise ReviewError(f"{where}.{key} is missing")
        if value == "":
            raise ReviewError(f"{where}.{key} is empty")
        raise ReviewError(f"{where}.{key} must be a string, not {_json_kind(value)}")
    return value


def _optional_object(request: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ReviewError(f"request.{key} must be a JSON object or null")
    return value


def parse_review(body: bytes) -> Review:
    """Decode and check an AdmissionReview; `ReviewError` says what is wrong with it."""
    if not body.strip():
        raise ReviewError("the request body is empty; expected an AdmissionReview JSON object")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ReviewError(f"the request body is not JSON: {error}") from None
    if not isinstance(document, Mapping):
        raise ReviewError(f"expected an AdmissionReview JSON object, got {_json_kind(document)}")
    api_version = document.get("apiVersion")
    if api_version not in REVIEW_VERSIONS:
        raise ReviewError(f'apiVersion is {_show(api_version)}; expected "{REVIEW_VERSIONS[0]}"')
    if document.get("kind") != "AdmissionReview":
        raise ReviewError(f'kind is {_show(document.get("kind"))}; expected "AdmissionReview"')
    request = document.get("request")
    if not isinstance(request, Mapping):
        raise ReviewError("request is missing or not a JSON object")
    uid = _field(request, "uid", "request")
    operation = _field(request, "operation", "request")
    if operation not in OPERATIONS:
        raise ReviewError(
            f"request.operation {_show(operation)} is not one of " + ", ".join(sorted(OPERATIONS))
        )
    kind = request.get("kind")
    if not isinstance(kind, Mapping):
        raise ReviewError("request.kind is missing or not a JSON object")
    obj = _optional_object(request, "object")
    name = _field(request, "name", "request", required=False)
    if not name and obj is not None:  # request.name is optional; the object has it then
        metadata = obj.get("metadata")
        named = metadata.get("name") if isinstance(metadata, Mapping) else None
        name = named if isinstance(named, str) else ""
    review = Review(
        api_version=str(api_version),
        uid=uid,
        operation=operation,
        group=_field(kind, "group", "request.kind", required=False),
        kind=_field(kind, "kind", "request.kind"),
        sub_resource=_field(request, "subResource", "request", required=False),
        namespace=_field(request, "namespace", "request", required=False),
        name=name,
        dry_run=request.get("dryRun") is True,
        object=obj,
        old_object=_optional_object(request, "oldObject"),
    )
    if review.operation in ("CREATE", "UPDATE") and review.object is None:
        raise ReviewError(f"request.object is missing; a {review.operation} must carry the object")
    if review.operation == "UPDATE" and review.old_object is None:
        raise ReviewError("request.oldObject is missing; an UPDATE must carry the old object")
    return review


@dataclass(frozen=True)
class Decision:
    """Allowed or denied; `rule` is a short code for the logs."""

    allowed: bool
    rule: str
    message: str = ""
    code: int = 200
    reason: str = ""
    details: Mapping[str, Any] | None = None


def review_response(review: Review, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview answer. A denial's status carries the code and message the API server
    passes on; the validation denial has no `reason`, so kubectl prints "Error from server:"
    followed by the API server's "admission webhook ... denied the request: <message>"."""
    response: dict[str, Any] = {"uid": review.uid, "allowed": decision.allowed}
    if not decision.allowed:
        status: dict[str, Any] = {
            "status": "Failure",
            "code": decision.code,
            "message": decision.message,
        }
        if decision.reason:
            status["reason"] = decision.reason
        if decision.details is not None:
            status["details"] = dict(decision.details)
        response["status"] = status
    return {"apiVersion": review.api_version, "kind": "AdmissionReview", "response": response}


# ------------------------------------------------------------------------- the count


class SpcCount:
    """How many SecretProviderClass objects the cluster has: the watch cache, plus creates this
    webhook allowed that the cache does not show yet."""

    def __init__(
        self, cache: kube.WatchCache, *, reservation_seconds: float = RESERVATION_SECONDS
    ) -> None:
        self._cache = cache
        self._reservation_seconds = reservation_seconds
        self._reserved: dict[tuple[str, str], float] = {}

    def exists(self, namespace: str, name: str) -> bool:
        return self._cache.get(name, namespace) is not None

    def count(self) -> int:
        now = time.monotonic()
        for key, deadline in list(self._reserved.items()):
            if deadline <= now or self._cache.get(key[1], key[0]) is not None:
                del self._reserved[key]
        return len(self._cache) + len(self._reserved)

    def reserve(self, namespace: str, name: str) -> None:
        self._reserved[(namespace, name)] = time.monotonic() + self._reservation_seconds


# ------------------------------------------------------------------------- the decision

_SECRET_OBJECT_RULES: Final = frozenset(
    rule
    for rule in Rule
    if rule.value.startswith("secret-")
    or rule in (Rule.DUPLICATE_SECRET_NAME, Rule.DUPLICATE_SECRET_DATA_KEY)
)


def _cause_field(error: SpcValidationError) -> str:
    """The SecretProviderClass field a validation error is about, for the Status causes."""
    if error.rule == Rule.NAME_MISSING:
        return "metadata.name"
    if error.rule == Rule.PROVIDER_UNSUPPORTED:
        return "spec.provider"
    if error.rule == Rule.SPC_INVALID:
        return "spec"
    if error.secret_object is not None or error.rule in _SECRET_OBJECT_RULES:
        return "spec.secretObjects"
    return "spec.parameters.objects"


def _spc_details(name: str, causes: list[dict[str, str]]) -> dict[str, Any]:
    return {"name": name, "group": kube.SPC_GROUP, "kind": SPC_RESOURCE, "causes": causes}


class Validator:
    """Turns a review into a decision; `count` is None when the limit is off (--max-spcs 0)."""

    def __init__(self, *, max_spcs: int = DEFAULT_MAX_SPCS, count: SpcCount | None = None) -> None:
        if max_spcs < 0:
            raise ValueError(f"the SecretProviderClass limit must be 0 or more, not {max_spcs}")
        if max_spcs > 0 and count is None:
            raise ValueError("a SecretProviderClass limit needs a count")
        self.max_spcs = max_spcs
        self._count = count

    def decide(self, review: Review) -> Decision:
        checked = self.check(review)
        return checked if checked is not None else self.admit(review)

    def check(self, review: Review) -> Decision | None:
        """Every decision that needs no count: allowed untouched, or denied as invalid; None when
        the object is valid and the limit decides (`admit`). Reads nothing shared, so it may run
        in a worker thread."""
        if not review.is_spc:
            return Decision(True, "not-a-secretproviderclass")
        if review.sub_resource:
            return Decision(True, "subresource")
        if review.operation not in ("CREATE", "UPDATE"):
            return Decision(True, review.operation.lower())
        obj = review.object
        assert obj is not None  # parse_review guarantees it for CREATE and UPDATE
        if review.operation == "UPDATE":
            metadata = obj.get("metadata")
            if isinstance(metadata, Mapping) and metadata.get("deletionTimestamp"):
                return Decision(True, "being-deleted")
            old = review.old_object
            if old is not None and obj.get("spec") == old.get("spec"):
                return Decision(True, "spec-unchanged")
        if is_ours(obj):
            try:
                validate_spc(obj)
            except SpcValidationError as error:
                message = str(error)
                cause = {
                    "reason": "FieldValueInvalid",
                    "field": _cause_field(error),
                    "message": message,
                }
                return Decision(
                    False,
                    error.rule.value,
                    message,
                    code=400,
                    details=_spc_details(review.name, [cause]),
                )
        return None

    def admit(self, review: Review) -> Decision:
        """The decision for a review `check` passed: the limit, for a create."""
        if review.operation == "CREATE":
            refused = self._over_limit(review)
            if refused is not None:
                return refused
        obj = review.object
        return Decision(True, "valid" if obj is not None and is_ours(obj) else "other-provider")

    def _over_limit(self, review: Review) -> Decision | None:
        count = self._count
        if self.max_spcs == 0 or count is None:
            return None
        if count.exists(review.namespace, review.name):
            return None  # the API server answers AlreadyExists; this create adds nothing
        existing = count.count()
        if existing >= self.max_spcs:
            plural = "object" if existing == 1 else "objects"
            message = (
                f"SecretProviderClass {json.dumps(review.name)} cannot be created: the cluster "
                f"already has {existing} SecretProviderClass {plural} and the limit is "
                f"{self.max_spcs} for the CCE Secrets Manager for DEW add-on; delete "
                "SecretProviderClass objects that are no longer used first"
            )
            return Decision(
                False,
                "limit",
                message,
                code=403,
                reason="Forbidden",
                details=_spc_details(review.name, []),
            )
        if not review.dry_run:
            count.reserve(review.namespace, review.name)
        return None


# ------------------------------------------------------------------------- the server


class TlsError(ValueError):
    """The certificate or key cannot be used."""


class WebhookStartError(RuntimeError):
    """The webhook cannot start; the message says why."""


def load_tls(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from PEM files, or `TlsError` saying why not."""
    for option, path in (("--tls-cert", cert_file), ("--tls-key", key_file)):
        file = Path(path)
        if not file.exists():
            raise TlsError(f"{option} {file}: no such file")
        if not file.is_file():
            raise TlsError(f"{option} {file}: not a regular file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as error:
        raise TlsError(
            f"cannot load the TLS certificate {cert_file} and key {key_file}: "
            f"{error.reason or error}"
        ) from None
    except OSError as error:
        raise TlsError(f"cannot read the TLS certificate or key: {error}") from None
    return context


@dataclass(frozen=True)
class WebhookConfig:
    host: str
    port: int
    tls_cert: Path
    tls_key: Path
    kubeconfig: str | None = None
    max_spcs: int = DEFAULT_MAX_SPCS


class WebhookServer:
    """The HTTPS server: `POST /validate` answers AdmissionReviews, `GET /healthz` says ready."""

    def __init__(self, validator: Validator, ssl_context: ssl.SSLContext) -> None:
        self.validator = validator
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.port = 0
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dew-webhook")
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post("/validate", self._validate)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self._ssl, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._stop_executor()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"https://{shown}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._stop_executor()

    def _stop_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _parse_and_check(self, body: bytes) -> tuple[Review, Decision | None]:
        """In the worker thread: the review, and its decision when no count is needed."""
        review = parse_review(body)
        return review, self.validator.check(review)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _validate(self, request: web.Request) -> web.Response:
        body = await request.read()
        loop = asyncio.get_running_loop()
        try:
            review, checked = await loop.run_in_executor(
                self._executor, self._parse_and_check, body
            )
        except ReviewError as error:
            log.warning(
                "Refused a malformed AdmissionReview",
                extra=fields(remote=request.remote or "", error=str(error)),
            )
            return web.Response(status=400, text=f"malformed AdmissionReview: {error}\n")
        except Exception:
            # A bug must not take the server down or hang the API server: answer 500 (the API
            # server then applies the configuration's failurePolicy).
            log.exception("Cannot decide", extra=fields(remote=request.remote or ""))
            return web.Response(status=500, text="internal error deciding the review\n")
        try:
            decision = checked if checked is not None else self.validator.admit(review)
        except Exception:
            # A bug must not take the server down or hang the API server: answer 500 (the API
            # server then applies the configuration's failurePolicy).
            log.exception("Cannot decide", extra=fields(uid=review.uid, object=review.subject))
            return web.Response(status=500, text="internal error deciding the review\n")
        log_fields = fields(
            uid=review.uid,
            operation=review.operation,
            kind=review.kind,
            object=review.subject,
            rule=decision.rule,
            **({"message": decision.message} if decision.message else {}),
        )
        log.info("Admitted" if decision.allowed else "Denied", extra=log_fields)
        return web.json_response(review_response(review, decision))


class Webhook:
    """The running webhook: the SecretProviderClass watch (when the limit is on) and the server."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._ssl = load_tls(config.tls_cert, config.tls_key)
        self._kube: kube.Kube | None = None
        self._cache: kube.WatchCache | None = None
        count: SpcCount | None = None
        if config.max_spcs > 0:
            self._kube = kube.Kube.from_options(config.kubeconfig)
            self._cache = kube.WatchCache(self._kube, kube.SECRET_PROVIDER_CLASS)
            count = SpcCount(self._cache)
        self.server = WebhookServer(Validator(max_spcs=config.max_spcs, count=count), self._ssl)

    async def start(self, *, sync_timeout: float = SYNC_TIMEOUT_SECONDS) -> None:
        """List the SecretProviderClass objects, then listen (so the first answer counts right)."""
        if self._cache is not None:
            try:
                await self._cache.start(timeout=sync_timeout)
            except Exception as error:
                await self.stop()
                why = (
                    f"not listed within {sync_timeout:g}s (is the API server reachable and "
                    "the SecretProviderClass CRD installed?)"
                    if isinstance(error, TimeoutError)
                    else str(error)
                )
                raise WebhookStartError(
                    f"cannot list SecretProviderClass objects, needed to enforce --max-spcs: {why}"
                ) from None
        try:
            await self.server.start(self.config.host, self.config.port)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "Listening for admission reviews",
            extra=fields(address=self.server.url, max_spcs=self.config.max_spcs),
        )

    async def stop(self) -> None:
        await self.server.stop()
        if self._cache is not None:
            await self._cache.stop()
        if self._kube is not None:
            await self._kube.close()


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def config_from_args(args: argparse.Namespace) -> WebhookConfig:
    host, port = parse_listen(args.listen)
    if args.max_spcs < 0:
        raise ValueError(f"--max-spcs must be 0 (no limit) or more, not {args.max_spcs}")
    return WebhookConfig(
        host=host,
        port=port,
        tls_cert=Path(args.tls_cert),
        tls_key=Path(args.tls_key),
        kubeconfig=args.kubeconfig,
        max_spcs=args.max_spcs,
    )


async def run(config: WebhookConfig) -> int:
    """0 after SIGTERM; 2 when the configuration is unusable (TLS files, kubeconfig, --listen);
    1 when the SecretProviderClass objects cannot be listed."""
    try:
        webhook = Webhook(config)
    except (TlsError, kube.KubeConfigError) as error:
        print(f"dew-csi webhook: {error}", file=sys.stderr, flush=True)
        return 2
    try:
        await webhook.start()
    except OSError as error:
        reason = error.strerror or str(error)
        print(
            f"dew-csi webhook: cannot listen on --listen {config.host}:{config.port}: {reason}",
            file=sys.stderr,
            flush=True,
        )
        return 2
    except WebhookStartError as error:
        print(f"dew-csi webhook: cannot start: {error}", file=sys.stderr, flush=True)
        return 1
    print(f"dew-csi webhook listening on {webhook.server.url}", flush=True)
    try:
        await until_terminated()
    finally:
        log.info("Shutting down")
        await webhook.stop()
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    setup_logging(args.log_format)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"dew-csi webhook: {error}", file=sys.stderr, flush=True)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(config))
    return 0
