"""Backends by name: the registry builds each from the CLI's options, through one protocol."""

from __future__ import annotations

import pytest

from orchestrator.backends import BACKENDS, open_backend
from orchestrator.backends.kubernetes.backend import KubernetesBackend
from orchestrator.backends.local.backend import LocalBackend
from orchestrator.errors import BadInput


def test_each_name_builds_its_backend_with_the_protocol_methods() -> None:
    local = open_backend("local", workers=2)
    cluster = open_backend("kubernetes", namespace="ns", context="ctx")
    assert isinstance(local, LocalBackend) and local.workers == 2
    assert isinstance(cluster, KubernetesBackend) and cluster.namespace == "ns"
    for backend in (local, cluster):
        for method in ("submit", "status", "watch", "logs", "cancel"):
            assert callable(getattr(backend, method))
    assert set(BACKENDS) == {"local", "kubernetes"}


def test_unknown_backend_and_options_that_do_not_apply_are_bad_input() -> None:
    with pytest.raises(BadInput, match="unknown backend 'slurm'"):
        open_backend("slurm")
    with pytest.raises(BadInput, match="--namespace does not apply to the local backend"):
        open_backend("local", namespace="ns")
    with pytest.raises(BadInput, match="--workers does not apply to the kubernetes backend"):
        open_backend("kubernetes", workers=3)


def test_cli_backend_flag_and_local_shorthand(cli, tmp_path) -> None:
    both = cli("status", "qs", "--local", "--backend", "kubernetes")
    assert both.code == 2 and "--local contradicts --backend kubernetes" in both.err
    named = cli("cancel", "qs", "--backend", "local")
    shorthand = cli("cancel", "qs", "--local")
    assert named.code == shorthand.code == 2
    assert named.err == shorthand.err  # the same backend answered both
