"""Fixtures shared by the whole suite: real servers, each in its own plugin module."""

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.redis",
    "tests.support.etcd",
    "tests.support.fluentd",
]
