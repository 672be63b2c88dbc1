"""``plan`` and ``submit`` never approve an object Kubernetes would refuse for its size:
the sweep's ConfigMap data must fit in 1 MiB, every object in etcd's 1.5 MiB."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.backends.kubernetes.manifests import (
    CONFIGMAP_DATA_LIMIT,
    OBJECT_LIMIT,
    check_object_sizes,
    render_sweep,
    sweep_json,
)
from orchestrator.errors import BadInput
from orchestrator.spec import parse_spec


def spec(seeds: int, datasets: int = 1) -> dict:
    return {
        "name": "big",
        "results": "s3://bucket/x",
        "datasets": [{"name": "digits", "label": f"d{i}"} for i in range(datasets)],
        "models": ["small_cnn"],
        "seeds": list(range(seeds)),
    }


@pytest.mark.slow
def test_a_sweep_whose_configmap_is_over_1_mib_is_refused_by_plan(cli, tmp_path: Path) -> None:
    """100,000 runs of one dataset: 1.09 MB of sweep JSON - plan says so and writes nothing."""
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(spec(100_000)))
    for args in ([], ["--out", tmp_path / "objects.yaml"]):
        r = cli("plan", path, *args)
        assert r.code == 2, r.err
        assert len(r.err.strip().splitlines()) == 1
        assert "ConfigMap" in r.err and "1 MiB" in r.err and "split the sweep" in r.err
    assert not (tmp_path / "objects.yaml").exists()


@pytest.mark.slow
def test_the_largest_sweep_that_fits_renders(tmp_path: Path) -> None:
    """100,000 runs over two datasets (half the seeds each) fit: about 0.54 MB."""
    sweep = parse_spec(spec(50_000, datasets=2))
    objects = render_sweep(sweep)
    assert len(sweep_json(sweep).encode()) < CONFIGMAP_DATA_LIMIT
    assert objects[0]["kind"] == "ConfigMap"


def test_every_object_is_checked_against_the_object_limit() -> None:
    job = {"kind": "Job", "metadata": {"name": "j"}, "spec": {"x": "y" * OBJECT_LIMIT}}
    with pytest.raises(BadInput, match=r"Job j: .* split the sweep"):
        check_object_sizes([job])
    data = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "z" * (1 << 20)}}
    data["data"]["b"] = "z"  # the limit is on all values together
    with pytest.raises(BadInput, match="ConfigMap c"):
        check_object_sizes([data])
    check_object_sizes([{"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "ok"}}])
