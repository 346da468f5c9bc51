"""The Quickstart demo and the pod-on-one-machine story: an app and its three sidecars."""
