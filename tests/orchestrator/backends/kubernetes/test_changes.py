"""``plan_changes`` decides on plain dicts: create what is missing, keep what stands, and
delete (only with replace) what another spec of the same sweep left."""

from __future__ import annotations

import pytest

from orchestrator.backends.kubernetes.changes import plan_changes, ref
from orchestrator.backends.kubernetes.manifests import SPEC_HASH_ANNOTATION
from orchestrator.errors import BadInput


def obj(kind: str, name: str, digest: str) -> dict:
    return {"kind": kind, "metadata": {"name": name, "annotations": {SPEC_HASH_ANNOTATION: digest}}}


DESIRED = [obj("ConfigMap", "qs-1234abcd", "h1"), obj("Job", "qs-1234abcd", "h1")]


def decide(found: list[dict], replace: bool = False):
    return plan_changes(DESIRED, found, digest="h1", sweep="qs", namespace="ns", replace=replace)


def test_nothing_found_creates_everything_configmap_first() -> None:
    changes = decide([])
    assert [ref(o) for o in changes.create] == ["configmap/qs-1234abcd", "job/qs-1234abcd"]
    assert changes.delete == [] and changes.unchanged == []


def test_the_same_spec_twice_creates_nothing() -> None:
    found = [obj("ConfigMap", "qs-1234abcd", "h1"), obj("Job", "qs-1234abcd", "h1")]
    changes = decide(found)
    assert changes.create == [] and changes.delete == []
    assert [ref(o) for o in changes.unchanged] == ["configmap/qs-1234abcd", "job/qs-1234abcd"]


def test_half_submitted_sweep_creates_only_the_missing_job() -> None:
    changes = decide([obj("ConfigMap", "qs-1234abcd", "h1")])
    assert [ref(o) for o in changes.create] == ["job/qs-1234abcd"]


def test_another_spec_is_refused_without_replace_and_named() -> None:
    found = [obj("ConfigMap", "qs-9999ffff", "h0"), obj("Job", "qs-9999ffff", "h0")]
    with pytest.raises(BadInput, match=r"configmap/qs-9999ffff.*--replace"):
        decide(found)


def test_replace_deletes_jobs_before_configmaps_then_creates() -> None:
    found = [obj("ConfigMap", "qs-9999ffff", "h0"), obj("Job", "qs-9999ffff", "h0")]
    changes = decide(found, replace=True)
    assert [ref(o) for o in changes.delete] == ["job/qs-9999ffff", "configmap/qs-9999ffff"]
    assert [ref(o) for o in changes.create] == ["configmap/qs-1234abcd", "job/qs-1234abcd"]
