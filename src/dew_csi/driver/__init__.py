"""The csi-secrets-store driver: CSI node plugin, mounts, rotation, SPC watch, secret sync."""
