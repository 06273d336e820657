"""SDK-HMAC-SHA256 request signing and verification (Huawei Cloud APIG "AK/SK" auth).

Pure functions, no I/O. The client signs with `sign_request`; the emulator checks with
`parse_authorization` + `verify_signature`. Both build the canonical request with the same
helpers, so a request this module signs is one it accepts, and the unit tests hold both to the
official SDK's signer byte for byte.

The canonical request (reference csms-api.md §4.1):

    METHOD \\n CanonicalURI \\n CanonicalQuery \\n CanonicalHeaders \\n SignedHeaders
    \\n PayloadHash

StringToSign is `SDK-HMAC-SHA256\\n<X-Sdk-Date>\\n<hex sha256(CanonicalRequest)>` and the signature
is the hex HMAC-SHA256 of it keyed with the secret key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

ALGORITHM = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
HEADER_AUTHORIZATION = "Authorization"
HEADER_DATE = "X-Sdk-Date"
HEADER_HOST = "Host"
HEADER_CONTENT_SHA256 = "X-Sdk-Content-Sha256"
HEADER_SECURITY_TOKEN = "X-Security-Token"
HEADER_PROJECT_ID = "X-Project-Id"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()
# The API gateway refuses requests whose X-Sdk-Date is further than this from its clock.
MAX_CLOCK_SKEW = timedelta(minutes=15)

QueryParams = Sequence[tuple[str, str]]


class MalformedAuthorization(ValueError):
    """The Authorization header is not `<ALGO> Access=..., SignedHeaders=..., Signature=...`."""


@dataclass(frozen=True)
class Authorization:
    algorithm: str
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str


@dataclass(frozen=True)
class SignedRequest:
    """What a signed request must carry: all headers (including Authorization), and the query
    string to put on the wire (the SDK sends exactly the canonical form)."""

    headers: dict[str, str]
    query_string: str
    canonical_request: str


def format_sdk_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(SDK_DATE_FORMAT)


def parse_sdk_date(text: str) -> datetime:
    """Parse an `X-Sdk-Date` value (`20261122T165000Z`) as an aware UTC datetime."""
    return datetime.strptime(text, SDK_DATE_FORMAT).replace(tzinfo=UTC)


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_uri(path: str) -> str:
    """Decode the path, re-encode each segment, and always end with `/` (as the SDK does)."""
    uri = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(params: QueryParams) -> str:
    """Sort the raw (key, value) pairs, then encode them; repeated and empty values are kept."""
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in sorted(params))


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Split a raw query string into decoded pairs. `+` is literal: the signer encodes a space
    as `%20`, never as `+`."""
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote(key), unquote(value)))
    return pairs


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Every header present at signing time, lower-cased and sorted; names with `_` are left
    out because some proxies drop them."""
    return sorted({name.lower() for name in headers if "_" not in name})


def canonical_headers(headers: Mapping[str, str], names: Sequence[str]) -> str:
    lowered = _lowered(headers)
    return "".join(f"{name}:{lowered[name].strip()}\n" for name in names)


def payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    if not body:
        return EMPTY_BODY_SHA256
    declared = _lowered(headers).get(HEADER_CONTENT_SHA256.lower())
    if declared:
        return declared
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    path: str,
    query: QueryParams,
    headers: Mapping[str, str],
    names: Sequence[str],
    body: bytes,
) -> str:
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            canonical_headers(headers, names),
            ";".join(names),
            payload_hash(headers, body),
        ]
    )


def string_to_sign(request_text: str, sdk_date: str) -> str:
    digest = hashlib.sha256(request_text.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def compute_signature(secret_key: str, text: str) -> str:
    return hmac.new(secret_key.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization_value(access_key: str, names: Sequence[str], signature: str) -> str:
    signed = ";".join(names)
    return f"{ALGORITHM} Access={access_key}, SignedHeaders={signed}, Signature={signature}"


def _is_json_or_bson(content_type: str) -> bool:
    return content_type.startswith(("application/json", "application/bson"))


def sign_request(
    *,
    method: str,
    host: str,
    path: str,
    query: QueryParams,
    headers: Mapping[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    now: datetime | None = None,
) -> SignedRequest:
    """Sign a request the way the SDK does.

    `path` is the already-encoded resource path (`/v1/p/secrets/a%20b`); `headers` are the
    headers to sign (Content-Type, X-Project-Id, X-Security-Token, ...). X-Sdk-Date (from `now`
    unless already present), Host (unless present) and, for non-JSON bodies,
    X-Sdk-Content-Sha256 are added, all of them signed.
    """
    if not access_key or not secret_key:
        raise ValueError("both an access key and a secret key are needed to sign a request")
    out = dict(headers)
    lowered = _lowered(out)
    content_type = lowered.get("content-type")
    if content_type and not _is_json_or_bson(content_type):
        out[HEADER_CONTENT_SHA256] = UNSIGNED_PAYLOAD
    sdk_date = lowered.get(HEADER_DATE.lower())
    if sdk_date is None:
        sdk_date = format_sdk_date(now or datetime.now(UTC))
        out[HEADER_DATE] = sdk_date
    if HEADER_HOST.lower() not in lowered:
        out[HEADER_HOST] = host
    names = signed_header_names(out)
    request_text = canonical_request(method, path, query, out, names, body)
    signature = compute_signature(secret_key, string_to_sign(request_text, sdk_date))
    out[HEADER_AUTHORIZATION] = authorization_value(access_key, names, signature)
    return SignedRequest(
        headers=out, query_string=canonical_query(query), canonical_request=request_text
    )


def parse_authorization(value: str) -> Authorization:
    """Parse `SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex`."""
    algorithm, _, rest = value.strip().partition(" ")
    if not algorithm or not rest:
        raise MalformedAuthorization("expected '<algorithm> Access=..., SignedHeaders=..., ...'")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, field_value = part.strip().partition("=")
        if not sep:
            raise MalformedAuthorization(f"malformed field {key!r}")
        fields[key] = field_value
    missing = [key for key in ("Access", "SignedHeaders", "Signature") if not fields.get(key)]
    if missing:
        raise MalformedAuthorization(f"missing {', '.join(missing)}")
    return Authorization(
        algorithm=algorithm,
        access_key=fields["Access"],
        signed_headers=tuple(fields["SignedHeaders"].split(";")),
        signature=fields["Signature"],
    )


def verify_signature(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    authorization: Authorization,
    secret_key: str,
) -> bool:
    """Recompute the signature over what was received and compare in constant time.

    The caller checks the algorithm, the AK, the date skew and which headers must be signed;
    a signed header absent from the request simply fails here.
    """
    lowered = _lowered(headers)
    names = authorization.signed_headers
    if any(name not in lowered for name in names):
        return False
    sdk_date = lowered.get(HEADER_DATE.lower())
    if sdk_date is None:
        return False
    request_text = canonical_request(method, raw_path, parse_query(raw_query), lowered, names, body)
    expected = compute_signature(secret_key, string_to_sign(request_text, sdk_date))
    return hmac.compare_digest(
        expected.encode("utf-8"), authorization.signature.encode("utf-8", "surrogateescape")
    )
