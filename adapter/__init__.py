"""The adapter sidecar."""
