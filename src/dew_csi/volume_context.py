"""The keys of a CSI volume's context, as kubelet fills it (`podInfoOnMount`) and as the driver
copies it into the provider's Mount attributes. Kubelet (simulated), driver and provider all
speak this one vocabulary."""

from collections.abc import Mapping
from typing import Any, Final

POD_NAME: Final = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE: Final = "csi.storage.k8s.io/pod.namespace"
POD_UID: Final = "csi.storage.k8s.io/pod.uid"
SERVICE_ACCOUNT_NAME: Final = "csi.storage.k8s.io/serviceAccount.name"
SERVICE_ACCOUNT_TOKENS: Final = "csi.storage.k8s.io/serviceAccount.tokens"
EPHEMERAL: Final = "csi.storage.k8s.io/ephemeral"
SECRET_PROVIDER_CLASS: Final = "secretProviderClass"
"""The pod volume's `volumeAttributes` key naming its SecretProviderClass."""
OBJECTS: Final = "objects"
"""The SecretProviderClass parameter listing the secrets (copied into the attributes)."""

KUBELET_OWNED: Final = frozenset(
    {POD_NAME, POD_NAMESPACE, POD_UID, SERVICE_ACCOUNT_NAME, SERVICE_ACCOUNT_TOKENS, EPHEMERAL}
)
"""The keys kubelet sets from the pod itself. Anything else in a volume context comes from the
pod spec's `volumeAttributes` (or an SPC's parameters): a namespace user's words."""


def pod_info(pod: Mapping[str, Any]) -> dict[str, str]:
    """The pod-info keys kubelet adds for a `podInfoOnMount` driver, from the Pod object.

    The ServiceAccount is `spec.serviceAccountName`, which the API server defaults to "default";
    an inline CSI volume is always ephemeral. No `serviceAccount.tokens`: the CSIDriver asks for
    none, and a restarted driver never has the ones kubelet handed out."""
    meta = pod.get("metadata") or {}
    return {
        POD_NAME: str(meta.get("name") or ""),
        POD_NAMESPACE: str(meta.get("namespace") or ""),
        POD_UID: str(meta.get("uid") or ""),
        SERVICE_ACCOUNT_NAME: str((pod.get("spec") or {}).get("serviceAccountName") or "default"),
        EPHEMERAL: "true",
    }


def merge_pod_info(
    user_attributes: Mapping[str, Any], trusted: Mapping[str, str]
) -> dict[str, str]:
    """A volume context as kubelet builds it: the user's attributes without any key kubelet owns,
    then the trusted pod info over them. A user attribute never survives under a kubelet key."""
    merged = {
        str(key): str(value)
        for key, value in user_attributes.items()
        if str(key) not in KUBELET_OWNED
    }
    merged.update(trusted)
    return merged
