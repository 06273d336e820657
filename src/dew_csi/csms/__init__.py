"""Huawei Cloud CSMS: the async client dew-csi uses, its credentials and errors, and a local
emulator of the CSMS v1 API (plus the ECS metadata service) for tests and the sandbox.

The emulators are not imported here: they pull in aiohttp, which the provider does not need.
"""

from dew_csi.csms.client import (
    CsmsClient,
    CsmsClientConfig,
    RetryPolicy,
    SecretInfo,
    SecretVersion,
    VersionMetadata,
    endpoint_for_region,
)
from dew_csi.csms.credentials import (
    Credentials,
    CredentialsChain,
    CredentialsProvider,
    EnvironmentCredentialsProvider,
    FileCredentialsProvider,
    MetadataCredentialsProvider,
    StaticCredentialsProvider,
    credentials_from_node_publish_secrets,
    default_chain,
)
from dew_csi.csms.errors import (
    AuthenticationFailed,
    CredentialsError,
    CredentialsUnavailable,
    CsmsError,
    CsmsUnavailable,
    InvalidRequest,
    SecretNotFound,
    Throttled,
    VersionNotFound,
)

__all__ = [
    "AuthenticationFailed",
    "Credentials",
    "CredentialsChain",
    "CredentialsError",
    "CredentialsProvider",
    "CredentialsUnavailable",
    "CsmsClient",
    "CsmsClientConfig",
    "CsmsError",
    "CsmsUnavailable",
    "EnvironmentCredentialsProvider",
    "FileCredentialsProvider",
    "InvalidRequest",
    "MetadataCredentialsProvider",
    "RetryPolicy",
    "SecretInfo",
    "SecretNotFound",
    "SecretVersion",
    "StaticCredentialsProvider",
    "Throttled",
    "VersionMetadata",
    "VersionNotFound",
    "credentials_from_node_publish_secrets",
    "default_chain",
    "endpoint_for_region",
]
