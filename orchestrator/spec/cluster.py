"""Where and with what a run executes: resources, the Kubernetes Job, S3 storage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ByteSize, Field, model_validator

from orchestrator.spec.fields import (
    Bytes,
    DnsLabel,
    Float,
    Int,
    Int32,
    PlainDict,
    _added,
    _endpoint,
    _Strict,
)


class ResourcesSpec(_Strict):
    gpus: Int = Field(0, ge=0, description="GPUs per run; 0 = CPU only.")
    cpu: str = Field("2", description="Kubernetes CPU request per run.")
    memory: str = Field("8Gi", description="Kubernetes memory request per run.")
    min_free_vram: Bytes = Field(
        ByteSize(0), description="Wait until each visible GPU has this much free (e.g. 10GiB)."
    )
    max_used_vram: Bytes | None = Field(
        None, description="Also wait until each visible GPU has at most this much in use."
    )
    vram_estimate: Bytes = Field(
        ByteSize(2 * 2**30), description="Memory one run needs, for packing runs onto GPUs."
    )
    guard_timeout_s: Float = Field(
        3600.0, gt=0, description="Seconds the GPU guard waits at most (finite; 86400 = a day)."
    )
    guard_poll_s: Float = Field(10.0, gt=0, description="Longest pause between GPU checks.")


class KubernetesSpec(_Strict):
    namespace: DnsLabel = Field(
        "early-repair",
        description="Namespace of the sweep's ConfigMap and Job; `--namespace` overrides it.",
    )
    parallelism: Int32 | None = Field(
        None,
        gt=0,
        description="Runs at once (the Job's parallelism). Default: all runs at once; with a"
        " Kueue queue, Kueue may start fewer (see min_parallelism).",
    )
    min_parallelism: Int32 | None = _added(
        None,
        gt=0,
        description="With a Kueue queue: the fewest runs at once Kueue may start the sweep"
        " with when the queue's quota cannot hold `parallelism` runs (Kueue partial"
        " admission, Job annotation kueue.x-k8s.io/job-min-parallelism; the Job keeps the"
        " admitted parallelism until it ends). Default 1: a sweep larger than the quota starts"
        " in parts instead of never; set it to `parallelism` for all-or-nothing admission.",
    )
    backoff_limit_per_index: Int32 = Field(
        2,
        ge=0,
        description="Retries of a failed run (the Job's backoffLimitPerIndex); bad input"
        " (exit 2) is never retried and evicted pods do not count.",
    )
    max_failed_indexes: Int32 | None = Field(
        None,
        ge=0,
        description="Fail the whole Job once more runs than this have failed (the Job's"
        " maxFailedIndexes); default: every run is tried.",
    )
    ttl_seconds_after_finished: Int32 = Field(
        86400,
        ge=0,
        description="Seconds after the Job finishes before Kubernetes deletes it and its pods"
        " (and the ConfigMap `submit` made); 86400 = a day, 0 = at once.",
    )
    active_deadline_seconds: Int | None = Field(
        None,
        gt=0,
        description="Seconds the whole Job may run before Kubernetes stops its pods and fails"
        " it (activeDeadlineSeconds); default: no limit.",
    )
    queue: DnsLabel | None = Field(None, description="Kueue LocalQueue name.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must run on (nodeSelector)."
    )
    tolerations: list[PlainDict] = Field(
        default_factory=list,
        description="Pod tolerations as Kubernetes writes them; with resources.gpus > 0, one"
        " for the nvidia.com/gpu NoSchedule taint is added.",
    )
    affinity: PlainDict | None = Field(
        None, description="Pod affinity as Kubernetes writes it (nodeAffinity, podAffinity, ...)."
    )
    priority_class_name: str | None = Field(
        None, description="PriorityClass of the pods; default: the cluster's default priority."
    )
    runtime_class_name: str | None = Field(
        None, description="RuntimeClass of the pods (e.g. nvidia); default: the node's runtime."
    )
    service_account: DnsLabel = Field(
        "early-repair-trainer",
        description="ServiceAccount the pods run as (no API token is mounted); k8s/ and the"
        " chart create the default.",
    )
    s3_secret: DnsLabel = Field("early-repair-s3", description="Secret with AWS_* keys.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="When the kubelet pulls `image` (the imagePullPolicy)."
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Secrets in the namespace with credentials for a private `image` registry.",
    )

    @model_validator(mode="after")
    def _partial_admission(self) -> KubernetesSpec:
        if self.min_parallelism is None:
            return self
        if self.queue is None:
            raise ValueError(
                "min_parallelism only applies to a sweep queued by Kueue: set kubernetes.queue"
                " or remove min_parallelism"
            )
        if self.parallelism is not None and self.min_parallelism > self.parallelism:
            raise ValueError(
                f"min_parallelism ({self.min_parallelism}) is larger than parallelism"
                f" ({self.parallelism}): lower it or raise parallelism"
            )
        return self


class StorageSpec(_Strict):
    endpoint_url: Annotated[str | None, AfterValidator(_endpoint)] = Field(
        None,
        description="S3 endpoint, e.g. MinIO's URL: http(s)://host[:port], no credentials"
        " (those come from the AWS chain).",
    )
    region: str | None = Field(
        None, description="The bucket's S3 region (AWS_REGION in pods); default: the AWS chain's."
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto",
        description="S3 URL style: auto (botocore decides), path (endpoint/bucket/key, what"
        " MinIO often needs) or virtual (bucket.endpoint/key).",
    )
