# syntax=docker/dockerfile:1.7
#
# The early-repair trainer image: what every pod of a sweep's Indexed Job runs
# (`early-repair trainer`, run index from JOB_COMPLETION_INDEX).
#
#   GPU (default target; torch's CUDA 13.0 build, as in development):
#     docker build -t early-repair-trainer:0.1.0 .
#   CPU only (small, for kind and laptops; torch CPU wheels):
#     docker build --target cpu -t early-repair-trainer:0.1.0-cpu .
#   Bake the ImageNet VGG16 weights (GTSRB preset) so no pod ever downloads them:
#     mkdir -p weights && cp /path/to/vgg16-397923af.pth weights/
#     docker build --build-arg VGG16_WEIGHTS=weights/vgg16-397923af.pth -t ... .
#
# One torch for development, tests and both images: constraints.txt (scripts/lock.py, from
# the development venv) pins every runtime dependency, torch 2.14.1 included; both images
# install exactly it, in a layer of its own before the project, so a source edit rebuilds
# only the project's layer. The GPU image takes torch's PyPI build, as development does
# (CUDA 13.0 in pip's nvidia-* wheels: the node needs an NVIDIA driver >= 580, nothing
# else); the CPU image takes the same version's CPU build from PyTorch's CPU index and
# leaves out the lock's "# gpu" lines. TORCH_VERSION and TORCH_CUDA below restate the
# pins, so the build fails if the lock and the image ever disagree (and the tests check
# them against the venv).
#
# The base image is pinned by tag. For builds that must not change under you, pin it by
# digest as well: look the digest up once and pass `tag@sha256:<digest>` (the tag stays for
# humans, the digest is what is pulled), e.g.
#     docker buildx imagetools inspect python:3.11.14-slim-trixie
#     docker build --build-arg BASE=python:3.11.14-slim-trixie@sha256:<digest> .
# Pin the image you deploy the same way: `spec.image` accepts
# `registry/name:tag@sha256:<digest>`, and Kubernetes then runs exactly those bytes.
#
# pip in the build: every RUN that runs pip mounts a build cache at /root/.cache/pip and
# names it with PIP_CACHE_DIR (HOME and XDG_CACHE_HOME point at the trainer's home, which pip
# as root would refuse as "not owned by the current user" and run without a cache). The
# lock's wheels are fetched with `pip download` into a wheelhouse in that cache (one per
# image flavour: the CPU and CUDA torch share a version number) and installed from there
# with --no-index: `pip download` skips a wheel already in its --dest folder, so a rebuild
# downloads nothing it downloaded before - even behind a proxy that strips the HTTP caching
# headers pip's own cache relies on. Behind a TLS-intercepting proxy, give pip the proxy's
# CA bundle as a build secret (it never lands in a layer):
#     docker build --secret id=pip-cert,src=/etc/ssl/certs/ca-certificates.crt ...
# Without registry access, build the base from Debian's packages (scripts/image-base) and
# pass it as BASE; scripts/image-check builds and runs the image as the Job's pod runs it.
#
# Runtime contract with the Job (orchestrator/backends/kubernetes/manifests.py):
# - numeric non-root USER 10001:10001 (named `trainer`), so runAsNonRoot can be verified;
# - the root filesystem is read-only in the pod: HOME (with XDG_CACHE_HOME and MPLCONFIGDIR
#   under it) and /tmp are emptyDir mounts there;
# - TORCH_HOME is deliberately *not* a writable cache: it is the read-only store of baked
#   weights ($TORCH_HOME/hub/checkpoints/vgg16-397923af.pth, torchvision's file name), kept
#   outside HOME so the emptyDir mounted on HOME does not hide it. The trainer never
#   downloads weights, and a read-only TORCH_HOME makes any attempt fail loudly.

ARG BASE=python:3.11.14-slim-trixie

# ---------------------------------------------------------------------------------------
# wheel: build the project's wheel once; the runtime stages install it (never the source).
FROM ${BASE} AS wheel
WORKDIR /src
# The build context is copied, not bind-mounted: COPY's cache key is the files' content in
# every builder, while buildah (podman build) keys a RUN's bind mount by its path alone and
# would reuse a stale wheel after a source edit. Nothing but the wheel leaves this stage.
# The build backend (setuptools, from pyproject.toml) is fetched by pip's build isolation.
COPY . /src
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-cert \
    export PIP_CACHE_DIR=/root/.cache/pip \
    && if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && pip wheel --no-deps --wheel-dir /wheels /src

# ---------------------------------------------------------------------------------------
# weights: optionally stage the ImageNet VGG16 weights under hub/checkpoints.
FROM ${BASE} AS weights
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
FROM ${BASE} AS cpu
ARG TORCH_VERSION=2.14.1
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
COPY constraints.txt /opt/venv-constraints.txt
# Dependencies: the lock minus its "# gpu" lines, with torch and torchvision (the lock's
# versions) from the CPU-only index - PyPI's Linux wheels are the CUDA build, ~10x larger.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-cert \
    export PIP_CACHE_DIR=/root/.cache/pip \
    && if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python -m venv /opt/venv \
    && grep -E '^(torch|torchvision)==' /opt/venv-constraints.txt > /tmp/torch.txt \
    && grep -vE '^(torch|torchvision)==|# gpu$' /opt/venv-constraints.txt > /tmp/rest.txt \
    && wheels="${PIP_CACHE_DIR}/wheelhouse-cpu" \
    && pip download --no-deps --dest "${wheels}" --index-url "${TORCH_INDEX_URL}" -r /tmp/torch.txt \
    && pip download --no-deps --dest "${wheels}" -r /tmp/rest.txt \
    && pip install --no-deps --no-index --find-links "${wheels}" -r /tmp/torch.txt -r /tmp/rest.txt \
    && rm /tmp/torch.txt /tmp/rest.txt \
    && pip check \
    && python -c "import torch; v = torch.__version__.split('+')[0]; assert v == '${TORCH_VERSION}', v; assert not torch.version.cuda"
COPY --from=weights /out/ /opt/early-repair/torch/
# The project alone: its dependencies are all in the layer above (pip check proves it).
# The wheel is copied (its content keys the cache in every builder, see the wheel stage);
# it stays in that layer, a few hundred kB.
COPY --from=wheel /wheels/ /opt/early-repair/wheels/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-cert \
    export PIP_CACHE_DIR=/root/.cache/pip \
    && if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && pip install --no-deps /opt/early-repair/wheels/*.whl \
    && pip check \
    && early-repair --help > /dev/null
USER 10001:10001
WORKDIR /home/trainer
ENTRYPOINT ["early-repair", "trainer"]

# ---------------------------------------------------------------------------------------
# gpu (default): torch's PyPI build with CUDA 13.0, exactly as the lock (and development) has.
FROM ${BASE} AS gpu
ARG TORCH_VERSION=2.14.1
ARG TORCH_CUDA=13.0
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="early-repair trainer (CUDA)" \
      org.opencontainers.image.description="Train, checkpoint and Arachne-repair DNNs as Kubernetes Indexed Job pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA container runtime mounts from the node's
# driver (CUDA and NVML); which GPUs is the device plugin's NVIDIA_VISIBLE_DEVICES.
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/home/trainer \
    XDG_CACHE_HOME=/home/trainer/.cache \
    MPLCONFIGDIR=/home/trainer/.config/matplotlib \
    TORCH_HOME=/opt/early-repair/torch \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --gid 10001 trainer \
    && useradd --uid 10001 --gid 10001 --home-dir /home/trainer --create-home \
         --shell /usr/sbin/nologin trainer \
    && mkdir -p /home/trainer/.cache /home/trainer/.config/matplotlib \
    && chown -R 10001:10001 /home/trainer
COPY constraints.txt /opt/venv-constraints.txt
# Dependencies: exactly the lock, CUDA libraries included (no GPU is needed to build).
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-cert \
    export PIP_CACHE_DIR=/root/.cache/pip \
    && if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && python -m venv /opt/venv \
    && wheels="${PIP_CACHE_DIR}/wheelhouse-gpu" \
    && pip download --no-deps --dest "${wheels}" -r /opt/venv-constraints.txt \
    && pip install --no-deps --no-index --find-links "${wheels}" -r /opt/venv-constraints.txt \
    && pip check \
    && python -c "import torch; v = torch.__version__.split('+')[0]; assert v == '${TORCH_VERSION}', v; assert torch.version.cuda == '${TORCH_CUDA}', torch.version.cuda"
COPY --from=weights /out/ /opt/early-repair/torch/
# The project alone: its dependencies are all in the layer above (pip check proves it).
# The wheel is copied (its content keys the cache in every builder, see the wheel stage);
# it stays in that layer, a few hundred kB.
COPY --from=wheel /wheels/ /opt/early-repair/wheels/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-cert \
    export PIP_CACHE_DIR=/root/.cache/pip \
    && if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && pip install --no-deps /opt/early-repair/wheels/*.whl \
    && pip check \
    && early-repair --help > /dev/null
USER 10001:10001
WORKDIR /home/trainer
ENTRYPOINT ["early-repair", "trainer"]
