"""Backends by name: the registry builds each from the CLI's options, through one protocol."""

from __future__ import annotations

import pytest
import yaml
from early_repair_testing.paths import QUICKSTART

from orchestrator.backends import BACKENDS, open_backend
from orchestrator.backends.kubernetes.backend import KubernetesBackend
from orchestrator.backends.local.backend import LocalBackend
from orchestrator.errors import BadInput
from orchestrator.spec import load_spec


def test_each_name_builds_its_backend_with_the_protocol_methods() -> None:
    local = open_backend("local", workers=2)
    cluster = open_backend("kubernetes", namespace="ns", context="ctx")
    assert isinstance(local, LocalBackend) and local.workers == 2
    assert isinstance(cluster, KubernetesBackend) and cluster.namespace == "ns"
    for backend in (local, cluster):
        for method in ("plan", "submit", "status", "watch", "logs", "cancel"):
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


def test_every_backend_plans_a_printable_plan_that_only_its_submit_takes() -> None:
    spec = load_spec(QUICKSTART, results="s3://bucket/sweeps")
    plans = {name: open_backend(name).plan(spec) for name in BACKENDS}
    for name, plan in plans.items():
        assert str(plan) == plan.render() and plan.summary() and "\n" not in plan.summary()
        assert plan.spec.name == spec.name and isinstance(plan.details(), dict)
        other = plans["kubernetes" if name == "local" else "local"]
        with pytest.raises(TypeError, match="plan"):
            open_backend(name).submit(other, dry_run=True)
    cluster, local = plans["kubernetes"], plans["local"]
    # The cluster's plan is its objects as `kubectl apply -f` takes them.
    objects = list(yaml.safe_load_all(cluster.render()))
    assert [o["kind"] for o in objects] == ["ConfigMap", "Job"]
    assert cluster.where == "early-repair" and cluster.summary().startswith("2 objects")
    assert cluster.details()["objects"] == [f"configmap/{cluster.name}", f"job/{cluster.name}"]
    # The local plan: one trainer process per run.
    assert local.where == "local"
    assert [r["name"] for r in yaml.safe_load(local.render())["runs"]] == [
        r.name for r in spec.runs()
    ]


def test_a_backend_namespace_goes_into_the_plan_and_a_bad_one_is_bad_input() -> None:
    spec = load_spec(QUICKSTART, results="s3://bucket/sweeps")
    plan = open_backend("kubernetes", namespace="team-a").plan(spec)
    assert plan.where == "team-a" and plan.objects[1]["metadata"]["namespace"] == "team-a"
    with pytest.raises(BadInput, match="--namespace: 'Team_A' is not a valid namespace"):
        open_backend("kubernetes", namespace="Team_A").plan(spec)


def test_replace_does_not_apply_to_local_runs() -> None:
    local = open_backend("local")
    with pytest.raises(BadInput, match="--replace does not apply to the local backend"):
        local.submit(local.plan(load_spec(QUICKSTART)), replace=True)
