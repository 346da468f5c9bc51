"""The ambassador sidecar."""
