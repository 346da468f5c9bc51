"""The watcher sidecar: reload the app on config change, probe it, register it in etcd."""

__all__ = ["__version__"]

__version__ = "0.1.0"
