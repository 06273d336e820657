"""dew-csi: a Secrets Store CSI driver and a Huawei Cloud CSMS provider."""

__version__ = "0.2.0"

DRIVER_NAME = "secrets-store.csi.k8s.io"
PROVIDER_NAME = "cce"
