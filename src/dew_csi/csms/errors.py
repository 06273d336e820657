"""Typed errors raised by the CSMS client and the credential sources.

Every message is meant to be shown to a user (in `kubectl describe pod`, in logs) and says what
to check next. Messages carry identifiers (secret name, version id, AK, project id) but never a
secret value, a secret key or a security token.

The CSMS request id of a failed response is not in `message`: that text reaches Events and
kubelet's FailedMount, where an id that differs on every retry would defeat their
de-duplication. It is kept in `request_id`, and `str(error)` appends it, for log lines and
command-line output (what Huawei Cloud support asks for).
"""

from __future__ import annotations


class CsmsError(Exception):
    """Base class: a CSMS call (or getting what it needs) failed.

    `status` is the HTTP status (None when no response was received), `error_code` the
    CSMS/APIG code from the body (for example `CSMS.0106`), `request_id` the `X-Request-Id`
    of the failed response, useful when asking Huawei Cloud support.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.request_id = request_id

    def __str__(self) -> str:
        """`message`, plus the request id when there is one: for logs, not for Events."""
        return f"{self.message} [request id {self.request_id}]" if self.request_id else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
            f"error_code={self.error_code!r}, request_id={self.request_id!r})"
        )


class SecretNotFound(CsmsError):
    """The secret does not exist (CSMS answers 400 CSMS.0106, 400 CSMS.0005 or 404)."""


class VersionNotFound(CsmsError):
    """The secret exists but the requested version (or stage) does not."""


class AuthenticationFailed(CsmsError):
    """CSMS or its API gateway refused the credentials or the signature (HTTP 401/403)."""


class Throttled(CsmsError):
    """CSMS kept answering 429 until the retry budget ran out."""


class CsmsUnavailable(CsmsError):
    """No usable answer: connection errors, timeouts, or 5xx after the retries."""


class InvalidRequest(CsmsError):
    """CSMS refused the request itself (bad name, too large a value, quota, ...)."""


class CredentialsError(CsmsError):
    """A credential source is configured but unusable (a key is missing, the metadata
    service refused, a file cannot be read)."""


class CredentialsUnavailable(CredentialsError):
    """A credential source is simply not configured here; a chain moves on to the next one."""
