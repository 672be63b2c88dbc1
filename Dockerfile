# syntax=docker/dockerfile:1.7
#
# The early-repair trainer image: what every pod of a sweep's Indexed Job runs
# (`early-repair trainer`, run index from JOB_COMPLETION_INDEX).
#
#   GPU (default target, CUDA PyTorch runtime):
#     docker build -t early-repair-trainer:0.1.0 .
#   CPU only (small, for kind and laptops; torch CPU wheels):
#     docker build --target cpu -t early-repair-trainer:0.1.0-cpu .
#   Bake the ImageNet VGG16 weights (GTSRB preset) so no pod ever downloads them:
#     mkdir -p weights && cp /path/to/vgg16-397923af.pth weights/
#     docker build --build-arg VGG16_WEIGHTS=weights/vgg16-397923af.pth -t ... .
#
# Base images are pinned by tag below. For builds that must not change under you, pin by
# digest as well: look the digest up once and pass `tag@sha256:<digest>` (the tag stays for
# humans, the digest is what is pulled), e.g.
#     docker buildx imagetools inspect pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
#     docker build --build-arg GPU_BASE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime@sha256:<digest> .
# and likewise CPU_BASE. Pin the image you deploy the same way: `spec.image` accepts
# `registry/name:tag@sha256:<digest>`, and Kubernetes then runs exactly those bytes.
#
# Runtime contract with the Job (orchestrator/backends/kubernetes/manifests.py):
# - numeric non-root USER 10001:10001 (named `trainer`), so runAsNonRoot can be verified;
# - the root filesystem is read-only in the pod: HOME (with XDG_CACHE_HOME and MPLCONFIGDIR
#   under it) and /tmp are emptyDir mounts there;
# - TORCH_HOME is deliberately *not* a writable cache: it is the read-only store of baked
#   weights ($TORCH_HOME/hub/checkpoints/vgg16-397923af.pth, torchvision's file name), kept
#   outside HOME so the emptyDir mounted on HOME does not hide it. The trainer never
#   downloads weights, and a read-only TORCH_HOME makes any attempt fail loudly.

ARG GPU_BASE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
ARG CPU_BASE=python:3.11.14-slim-trixie

# ---------------------------------------------------------------------------------------
# wheel: build the project's wheel once; the runtime stages install it (never the source).
FROM ${CPU_BASE} AS wheel
WORKDIR /src
# A throw-away writable bind of the build context: nothing but the wheel leaves this stage.
# The build backend (setuptools, from pyproject.toml) is fetched by pip's build isolation.
RUN --mount=type=bind,source=.,target=/src,rw \
    --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels /src

# ---------------------------------------------------------------------------------------
# weights: optionally stage the ImageNet VGG16 weights under hub/checkpoints.
FROM ${CPU_BASE} AS weights
# Path of vgg16-397923af.pth inside the build context (empty: bake nothing).
ARG VGG16_WEIGHTS=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# torchvision names the file after the first 8 hex digits of its SHA-256, so a wrong or
# truncated file fails the build here instead of failing a GPU job hours later.
RUN --mount=type=bind,source=.,target=/ctx \
    mkdir -p /out/hub/checkpoints \
    && if [[ -n "${VGG16_WEIGHTS}" ]]; then \
         src="/ctx/${VGG16_WEIGHTS}"; \
         [[ -f "${src}" ]] || { echo "VGG16_WEIGHTS=${VGG16_WEIGHTS}: no such file in the build context (check .dockerignore)" >&2; exit 1; }; \
         digest="$(sha256sum "${src}" | cut -c1-8)"; \
         [[ "${digest}" == "397923af" ]] || { echo "VGG16_WEIGHTS: sha256 starts with ${digest}, expected 397923af (torchvision's vgg16-397923af.pth)" >&2; exit 1; }; \
         install -m 0444 "${src}" /out/hub/checkpoints/vgg16-397923af.pth; \
       fi

# ---------------------------------------------------------------------------------------
# cpu: small image for kind and CPU-only clusters.
FROM ${CPU_BASE} AS cpu
ARG TORCH_VERSION=2.11.0
ARG TORCHVISION_VERSION=0.26.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="early-repair trainer (CPU)" \
      org.opencontainers.image.description="Train, checkpoint and Arachne-repair DNNs as Kubernetes Indexed Job pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/home/trainer \
    XDG_CACHE_HOME=/home/trainer/.cache \
    MPLCONFIGDIR=/home/trainer/.config/matplotlib \
    TORCH_HOME=/opt/early-repair/torch \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --gid 10001 trainer \
    && useradd --uid 10001 --gid 10001 --home-dir /home/trainer --create-home \
         --shell /usr/sbin/nologin trainer \
    && mkdir -p /home/trainer/.cache /home/trainer/.config/matplotlib \
    && chown -R 10001:10001 /home/trainer
# torch first, from the CPU-only index (PyPI's default wheels bundle CUDA, ~10x larger);
# the constraints file then keeps the project's install from replacing it.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" \
         "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip freeze | grep -E '^(torch|torchvision)==' > /opt/venv/torch-constraints.txt
COPY --from=weights /out/ /opt/early-repair/torch/
# The wheel's own version is fixed by its file name, its dependencies' by pyproject.toml.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    pip install --constraint /opt/venv/torch-constraints.txt /wheels/*.whl \
    && early-repair --help > /dev/null
USER 10001:10001
WORKDIR /home/trainer
ENTRYPOINT ["early-repair", "trainer"]

# ---------------------------------------------------------------------------------------
# gpu (default): CUDA PyTorch runtime; torch and torchvision come with the base image.
FROM ${GPU_BASE} AS gpu
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="early-repair trainer (CUDA)" \
      org.opencontainers.image.description="Train, checkpoint and Arachne-repair DNNs as Kubernetes Indexed Job pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV HOME=/home/trainer \
    XDG_CACHE_HOME=/home/trainer/.cache \
    MPLCONFIGDIR=/home/trainer/.config/matplotlib \
    TORCH_HOME=/opt/early-repair/torch \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --gid 10001 trainer \
    && useradd --uid 10001 --gid 10001 --home-dir /home/trainer --create-home \
         --shell /usr/sbin/nologin trainer \
    && mkdir -p /home/trainer/.cache /home/trainer/.config/matplotlib \
    && chown -R 10001:10001 /home/trainer
COPY --from=weights /out/ /opt/early-repair/torch/
# Keep the base image's CUDA build of torch/torchvision: pin them to what is installed so
# resolving the project's dependencies can never swap in another build from PyPI.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    python -c 'import torch, torchvision; print(f"torch=={torch.__version__}\ntorchvision=={torchvision.__version__}")' \
         > /tmp/torch-constraints.txt \
    && pip install --constraint /tmp/torch-constraints.txt /wheels/*.whl \
    && rm /tmp/torch-constraints.txt \
    && python -c 'import torch; assert torch.version.cuda, "base image lost its CUDA build of torch"' \
    && early-repair --help > /dev/null
USER 10001:10001
WORKDIR /home/trainer
ENTRYPOINT ["early-repair", "trainer"]
