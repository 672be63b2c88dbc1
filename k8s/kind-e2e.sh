#!/usr/bin/env bash
# End-to-end check on kind: build the CPU trainer image, create a cluster, load the image,
# deploy namespace + RBAC + Secret + MinIO, submit the quickstart sweep with 0 GPUs and
# results on MinIO, wait for it, aggregate the results from MinIO on this machine, and
# cancel the sweep (its objects go, the results stay).
# It stops at the first broken step and says which one.
#
# Needs: docker (a running engine), kind, kubectl, and early-repair installed on this machine
# (e.g. .venv/bin after scripts/bootstrap). The cluster gets its own kubeconfig file, so
# your current kubectl context is never touched.
#
# Usage: k8s/kind-e2e.sh
# Environment (all optional):
#   CLUSTER_NAME      kind cluster (default early-repair-e2e; reused if it exists)
#   KIND_NODE_IMAGE   node image (default: the one pinned in k8s/kind-config.yaml)
#   KEEP_CLUSTER=1    keep the cluster after success (it is always kept after a failure)
#   SWEEP_TIMEOUT     seconds to wait for the sweep (default 3600)
#   MINIO_LOCAL_PORT  local port for the MinIO port-forward (default 19000)
#   EARLY_REPAIR      the CLI to use (default: early-repair on PATH)
#   PYTHON            a Python with PyYAML, for the temp spec (default: the one next to
#                     EARLY_REPAIR, else python3)
#   WORK_DIR          where the temp spec, plan and report go (default: a new temp dir)

# -E: functions and subshells inherit the ERR trap, so every failure names its step.
set -Eeuo pipefail

STEP="start"
NAMESPACE="early-repair"
BUCKET="early-repair"
MINIO_SERVICE="early-repair-minio"

step() {
  STEP="$1"
  printf '\n==> %s\n' "$STEP" >&2
}

die() {
  printf '\nkind-e2e: FAILED at step "%s": %s\n' "$STEP" "$*" >&2
  exit 1
}

# --- tools first, with nothing but bash builtins, so a missing tool is the first message --
missing=()
for tool in docker kind kubectl "${EARLY_REPAIR:-early-repair}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  printf 'kind-e2e: missing on PATH: %s\n' "${missing[*]}" >&2
  printf '  needs docker (with a running engine), kind, kubectl and early-repair\n' >&2
  exit 127
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EARLY_REPAIR="$(command -v "${EARLY_REPAIR:-early-repair}")"
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON="$(dirname "$EARLY_REPAIR")/python"
  [[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"
fi
CLUSTER_NAME="${CLUSTER_NAME:-early-repair-e2e}"
SWEEP_TIMEOUT="${SWEEP_TIMEOUT:-3600}"
MINIO_LOCAL_PORT="${MINIO_LOCAL_PORT:-19000}"
WORK_DIR="${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/early-repair-e2e.XXXXXX")}"
mkdir -p "$WORK_DIR"
RUN_ID="$(date -u +%Y%m%d%H%M%S)-$$"
IMAGE="early-repair-trainer:e2e-${RUN_ID}"
SWEEP="quickstart-e2e-${RUN_ID}"
RESULTS="s3://${BUCKET}/e2e-${RUN_ID}"
LOCAL_ENDPOINT="http://127.0.0.1:${MINIO_LOCAL_PORT}"
export KUBECONFIG="$WORK_DIR/kubeconfig"

CREATED_CLUSTER=0
SUCCEEDED=0
PORT_FORWARD_PID=""

diagnose() {
  # Best effort: whatever explains a failure; never fails itself.
  set +e
  echo "---- pods" >&2
  kubectl -n "$NAMESPACE" get pods -o wide >&2
  echo "---- jobs" >&2
  kubectl -n "$NAMESPACE" get jobs -o wide >&2
  echo "---- recent events" >&2
  kubectl -n "$NAMESPACE" get events --sort-by=.lastTimestamp 2>&1 | tail -n 30 >&2
  echo "---- early-repair status / logs" >&2
  "$EARLY_REPAIR" status "$SWEEP" --namespace "$NAMESPACE" --endpoint-url "$LOCAL_ENDPOINT" -o table >&2
  "$EARLY_REPAIR" logs "$SWEEP" --namespace "$NAMESPACE" --endpoint-url "$LOCAL_ENDPOINT" 2>&1 \
    | tail -n 60 >&2
  set -e
}

on_error() {
  local rc=$? line=$1
  # A failing $(...) reports once, in the shell that runs the step, not in the subshell too.
  if ((BASH_SUBSHELL)); then
    exit "$rc"
  fi
  trap - ERR
  printf '\nkind-e2e: FAILED at step "%s" (line %s, exit %s)\n' "$STEP" "$line" "$rc" >&2
  if [[ -s "$KUBECONFIG" ]]; then
    diagnose
  fi
  exit "$rc"
}
trap 'on_error $LINENO' ERR

cleanup() {
  if [[ -n "$PORT_FORWARD_PID" ]]; then
    kill "$PORT_FORWARD_PID" 2>/dev/null || true
  fi
  if ((SUCCEEDED)) && ((CREATED_CLUSTER)) && [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
    kind delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG" || true
  elif ((CREATED_CLUSTER)); then
    printf 'kind-e2e: cluster %s kept; KUBECONFIG=%s; delete it with: kind delete cluster --name %s\n' \
      "$CLUSTER_NAME" "$KUBECONFIG" "$CLUSTER_NAME" >&2
  fi
}
trap cleanup EXIT

# wait_job NAME TIMEOUT [sweep]: 0 when the Job completes, 1 as soon as it fails or time
# runs out; with "sweep", print the sweep's status table every minute.
wait_job() {
  local name=$1 timeout=$2 show=${3:-} waited=0 conditions
  while ((waited < timeout)); do
    conditions="$(kubectl -n "$NAMESPACE" get job "$name" \
      -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')"
    case " $conditions " in
      *" Complete "*) return 0 ;;
      *" Failed "*)
        printf 'kind-e2e: job %s failed: %s\n' "$name" "$conditions" >&2
        return 1
        ;;
      *) ;;
    esac
    sleep 10
    waited=$((waited + 10))
    if [[ "$show" == sweep ]] && ((waited % 60 == 0)); then
      printf '  ... %s: %ss\n' "$name" "$waited" >&2
      port_forward
      KUBECONFIG="$SUBMITTER_KUBECONFIG" "$EARLY_REPAIR" status "$SWEEP" --namespace "$NAMESPACE" \
        --endpoint-url "$LOCAL_ENDPOINT" -o table >&2 || true
    fi
  done
  printf 'kind-e2e: job %s did not finish within %ss\n' "$name" "$timeout" >&2
  return 1
}

# port_forward: make MinIO reachable on $LOCAL_ENDPOINT, (re)starting kubectl port-forward
# if it is not running (it can drop while a long sweep runs).
port_forward() {
  if [[ -n "$PORT_FORWARD_PID" ]] && kill -0 "$PORT_FORWARD_PID" 2>/dev/null; then
    return 0
  fi
  kubectl -n "$NAMESPACE" port-forward "svc/$MINIO_SERVICE" "$MINIO_LOCAL_PORT:9000" \
    >>"$WORK_DIR/port-forward.log" 2>&1 &
  PORT_FORWARD_PID=$!
  local _
  for _ in $(seq 1 30); do
    if ! kill -0 "$PORT_FORWARD_PID" 2>/dev/null; then
      die "kubectl port-forward exited; see $WORK_DIR/port-forward.log"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$MINIO_LOCAL_PORT") 2>/dev/null; then
      return 0
    fi
    sleep 1
  done
  die "MinIO is not reachable on $LOCAL_ENDPOINT"
}

step "check the container engine"
docker info >/dev/null

step "build the CPU trainer image $IMAGE"
DOCKER_BUILDKIT=1 docker build --target cpu --tag "$IMAGE" "$ROOT"

step "create kind cluster $CLUSTER_NAME"
if kind get clusters 2>/dev/null | grep -qx -- "$CLUSTER_NAME"; then
  echo "reusing the existing cluster $CLUSTER_NAME" >&2
  kind export kubeconfig --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG"
else
  node_image=()
  if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
    node_image=(--image "$KIND_NODE_IMAGE")
  fi
  kind create cluster --name "$CLUSTER_NAME" --config "$ROOT/k8s/kind-config.yaml" \
    --kubeconfig "$KUBECONFIG" --wait 180s "${node_image[@]}"
  CREATED_CLUSTER=1
fi

step "load $IMAGE into the cluster's nodes"
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"

step "apply namespace and RBAC"
kubectl apply -f "$ROOT/k8s/namespace.yaml"
kubectl apply -f "$ROOT/k8s/rbac.yaml"

step "a kubeconfig for the submitter ServiceAccount (the CLI runs with only its Role)"
SUBMITTER_KUBECONFIG="$WORK_DIR/submitter.kubeconfig"
cp "$KUBECONFIG" "$SUBMITTER_KUBECONFIG"
submitter_token="$(kubectl -n "$NAMESPACE" create token early-repair-submitter \
  --duration="$((SWEEP_TIMEOUT + 3600))s")"
KUBECONFIG="$SUBMITTER_KUBECONFIG" kubectl config set-credentials e2e-submitter \
  --token="$submitter_token" >/dev/null
KUBECONFIG="$SUBMITTER_KUBECONFIG" kubectl config set-context --current \
  --user=e2e-submitter --namespace="$NAMESPACE" >/dev/null
# The submitter may not read Secrets: proves the Role is as narrow as it claims.
if KUBECONFIG="$SUBMITTER_KUBECONFIG" kubectl auth can-i get secrets -n "$NAMESPACE" >/dev/null; then
  die "the submitter can read Secrets"
fi

step "create the S3 Secret (MinIO's root user too)"
if kubectl -n "$NAMESPACE" get secret early-repair-s3 >/dev/null 2>&1; then
  echo "keeping the existing Secret early-repair-s3" >&2
else
  access_key="e2e$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  secret_key="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  kubectl -n "$NAMESPACE" create secret generic early-repair-s3 \
    --from-literal=AWS_ACCESS_KEY_ID="$access_key" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$secret_key" >/dev/null
fi
AWS_ACCESS_KEY_ID="$(kubectl -n "$NAMESPACE" get secret early-repair-s3 \
  -o jsonpath='{.data.AWS_ACCESS_KEY_ID}' | base64 --decode)"
AWS_SECRET_ACCESS_KEY="$(kubectl -n "$NAMESPACE" get secret early-repair-s3 \
  -o jsonpath='{.data.AWS_SECRET_ACCESS_KEY}' | base64 --decode)"

step "deploy MinIO and create bucket $BUCKET"
kubectl apply -f "$ROOT/k8s/minio.yaml"
kubectl -n "$NAMESPACE" rollout status "deployment/$MINIO_SERVICE" --timeout=300s
wait_job early-repair-minio-bucket 300

step "port-forward MinIO to $LOCAL_ENDPOINT (status, logs and aggregate read the results)"
port_forward
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=us-east-1

step "write the e2e spec (quickstart, 0 GPUs, results on MinIO)"
SPEC="$WORK_DIR/quickstart-e2e.yaml"
# Values go in through the environment and the heredoc is quoted: bash expands nothing in it.
E2E_SWEEP="$SWEEP" E2E_IMAGE="$IMAGE" E2E_RESULTS="$RESULTS" E2E_NAMESPACE="$NAMESPACE" \
  E2E_ENDPOINT="http://$MINIO_SERVICE.$NAMESPACE.svc:9000" \
  "$PYTHON" - "$ROOT/settings/quickstart.yaml" "$SPEC" <<'PY'
import os
import sys

import yaml

env = os.environ
with open(sys.argv[1]) as f:
    spec = yaml.safe_load(f)
spec["name"] = env["E2E_SWEEP"]
spec["image"] = env["E2E_IMAGE"]
spec["results"] = env["E2E_RESULTS"]
spec["storage"] = {
    "endpoint_url": env["E2E_ENDPOINT"],
    "addressing_style": "path",
    "region": "us-east-1",
}
spec["resources"] = {**spec.get("resources", {}), "gpus": 0, "cpu": "1", "memory": "2Gi"}
# Never: the image exists only inside the kind node; a pull would go to Docker Hub and fail
# slowly, so a missed image load fails at once instead.
spec["kubernetes"] = {
    **spec.get("kubernetes", {}),
    "namespace": env["E2E_NAMESPACE"],
    "image_pull_policy": "Never",
}
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(spec, f, sort_keys=False)
PY
cat "$SPEC" >&2

step "plan: render the objects and dry-run them on the API server (Pod Security included)"
PLAN="$WORK_DIR/plan.yaml"
"$EARLY_REPAIR" plan "$SPEC" --out "$PLAN" >/dev/null
dry_run_log="$WORK_DIR/dry-run.log"
kubectl apply --dry-run=server -f "$PLAN" >"$dry_run_log" 2>&1
cat "$dry_run_log" >&2
if grep -qi "violate PodSecurity" "$dry_run_log"; then
  die "the trainer's pod template violates the namespace's Pod Security profile (see above)"
fi

step "submit sweep $SWEEP"
KUBECONFIG="$SUBMITTER_KUBECONFIG" "$EARLY_REPAIR" submit "$SPEC" --namespace "$NAMESPACE"
# The objects of the plan must be exactly the ones submit created.
JOB="$(kubectl get -f "$PLAN" -o jsonpath='{range .items[?(@.kind=="Job")]}{.metadata.name}{end}')"
[[ -n "$JOB" ]] || die "no Job in $PLAN"

step "wait for the sweep (job $JOB, up to ${SWEEP_TIMEOUT}s)"
wait_job "$JOB" "$SWEEP_TIMEOUT" sweep
port_forward
KUBECONFIG="$SUBMITTER_KUBECONFIG" "$EARLY_REPAIR" status "$SWEEP" --namespace "$NAMESPACE" \
  --endpoint-url "$LOCAL_ENDPOINT" -o table

step "aggregate $RESULTS from MinIO"
REPORT="$WORK_DIR/report"
"$EARLY_REPAIR" aggregate "$RESULTS" --sweep "$SWEEP" --out "$REPORT" --strict \
  --endpoint-url "$LOCAL_ENDPOINT"
[[ -s "$REPORT/records.csv" ]] || die "aggregate wrote no records to $REPORT/records.csv"
echo "records: $(($(wc -l <"$REPORT/records.csv") - 1)) rows in $REPORT" >&2

step "cancel the sweep: its Job and ConfigMap go, the results stay"
KUBECONFIG="$SUBMITTER_KUBECONFIG" "$EARLY_REPAIR" cancel "$SWEEP" --namespace "$NAMESPACE"
kubectl wait --for=delete -f "$PLAN" --timeout=120s
"$EARLY_REPAIR" aggregate "$RESULTS" --sweep "$SWEEP" --out "$WORK_DIR/report-after-cancel" \
  --strict --endpoint-url "$LOCAL_ENDPOINT" >/dev/null

SUCCEEDED=1
STEP="done"
printf '\nkind-e2e: OK - sweep %s ran on kind and aggregated from MinIO into %s\n' "$SWEEP" "$REPORT" >&2
