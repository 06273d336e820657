"""The keys of a CSI volume's context, as kubelet fills it (`podInfoOnMount`) and as the driver
copies it into the provider's Mount attributes. Kubelet (simulated), driver and provider all
speak this one vocabulary."""

from typing import Final

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
