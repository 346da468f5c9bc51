"""The watcher sidecar."""
