"""Building Kubernetes Secrets from mounted files (secretObjects), including kubernetes.io/tls."""

from __future__ import annotations

import base64

import pytest

from dew_csi import spc
from dew_csi.driver import secret_sync

CERT = b"-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"
CHAIN = b"-----BEGIN CERTIFICATE-----\nMIIBchain\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIEkey\n-----END PRIVATE KEY-----\n"


def synced(type_: str, *items: tuple[str, str]) -> spc.SyncedSecret:
    return spc.SyncedSecret(
        secret_name="my-secret-01",
        type=type_,
        data=tuple(spc.SyncedSecretData(object_name=o, key=k) for o, k in items),
        labels={"team": "a"},
        annotations={"note": "x"},
    )


def test_opaque_secret_takes_file_contents_and_the_managed_label() -> None:
    entry = synced("Opaque", ("dbusername01", "db_username_01"), ("dbusername02", "db_username_02"))
    data = secret_sync.secret_data(entry, {"dbusername01": b"u1", "dbusername02": b"u2"})
    secret = secret_sync.build_secret(entry, "default", data)
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["labels"] == {
        "team": "a",
        "secrets-store.csi.k8s.io/managed": "true",
    }
    assert secret["metadata"]["annotations"] == {"note": "x"}
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
        "db_username_01": b"u1",
        "db_username_02": b"u2",
    }


def test_a_missing_file_names_the_object_and_never_a_value() -> None:
    entry = synced("Opaque", ("absent", "k"))
    with pytest.raises(secret_sync.SecretSyncError) as caught:
        secret_sync.secret_data(entry, {"present": b"TOP-SECRET"})
    assert 'objectName "absent" not found in the pod' in str(caught.value)
    assert "TOP-SECRET" not in str(caught.value)


def test_tls_secrets_split_a_pem_bundle_as_upstream() -> None:
    entry = synced(secret_sync.TLS_TYPE, ("bundle", "tls.crt"), ("bundle", "tls.key"))
    data = secret_sync.secret_data(entry, {"bundle": KEY + CERT + CHAIN})
    assert data == {"tls.crt": CERT + CHAIN, "tls.key": KEY}


def test_tls_secrets_refuse_other_keys_and_files_without_pem() -> None:
    with pytest.raises(secret_sync.SecretSyncError, match=r"only takes the keys tls\.crt"):
        secret_sync.secret_data(
            synced(secret_sync.TLS_TYPE, ("bundle", "ca.crt")), {"bundle": CERT}
        )
    with pytest.raises(secret_sync.SecretSyncError, match="holds no PEM private key"):
        secret_sync.secret_data(
            synced(secret_sync.TLS_TYPE, ("bundle", "tls.key")), {"bundle": CERT}
        )
