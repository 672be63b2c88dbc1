"""Every command against hostile input: alias bombs, deep nesting,
/dev/zero, huge and non-finite numbers, booleans for numbers, unicode garbage, ``../`` names,
credentials in URLs, missing files, folders for files and binary files.

Each case must exit 2 with at most one stderr line, no traceback, nothing on stdout, nothing
created in its working folder (where its results, cache and outputs point), and never echo
a secret. The cases run in two subprocesses (``cli_batch.py``): one for the control plane
and one with torch loaded for ``trainer`` and ``prepare``. Each process may allocate at most
2 GiB beyond what its imports took (RLIMIT_AS), so a bomb meets a ceiling, not the machine;
the per-case timeout is a safety net against a hang, not a speed target.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from early_repair_testing.paths import REPO

GiB = 1 << 30
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # AWS-style: '/' and '+' inside
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
CREDS = f"{KEY_ID}:{SECRET}@"
GOOD = """\
name: hostile
datasets: [digits]
models: [small_cnn]
seeds: [1]
training: {max_epochs: 1, num_threads: 1, device: cpu}
"""


def _bomb(levels: int, where: str) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    body = "\n".join(" " * 6 + line for line in lines)
    if where == "options":
        return (
            "name: bomb\ndatasets:\n  - name: pkg.mod:load\n    num_classes: 2\n"
            f"    options:\n{body}\nmodels: [small_cnn]\nseeds: [1]\n"
        )
    return (
        f"name: bomb\ndatasets: [digits]\nmodels: [small_cnn]\nx:\n{body}\nseeds: *a{levels - 1}\n"
    )


def _training(extra: str) -> str:
    return GOOD.replace("max_epochs: 1,", f"max_epochs: 1, {extra},")


def _unicode_garbage() -> str:
    rng = random.Random(16)
    ranges = [(0x20, 0x7E), (0xA0, 0x2FF), (0x370, 0x52F), (0x2000, 0x206F), (0x1F300, 0x1F6FF)]
    chars = []
    for _ in range(3000):
        lo, hi = rng.choice(ranges)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


# Sweep files: name -> content. Every one must be refused by every command that reads a spec.
SPECS: dict[str, str | bytes] = {
    "alias-bomb-options": _bomb(9, "options"),  # under 1 KB, 387 million strings expanded
    "alias-bomb-big": _bomb(14, "options"),
    "alias-bomb-seeds": _bomb(9, "seeds"),
    "alias-self": GOOD + "x: &x {y: *x}\n",
    "deep-flow-50000": "name: deep\nx: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "deep-map-50000": "{a: " * 50_000 + "}" * 50_000 + "\n",
    "deep-block-200": "".join(" " * i + "a:\n" for i in range(200)) + " " * 200 + "b: 1\n",
    "huge-5MiB": GOOD + "description: " + "x" * (5 << 20) + "\n",
    "binary": random.Random(1).randbytes(4096),
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + random.Random(2).randbytes(512),
    "nul-bytes": b"name: x\x00\x01\x02\n",
    "utf16": GOOD.encode("utf-16"),
    "empty": b"",
    "a-list": "- digits\n- small_cnn\n",
    "a-scalar": "just some words\n",
    "two-documents": GOOD + "---\n" + GOOD,
    "unclosed-bracket": GOOD + "repair: {classes: [3\n",
    "tab-indent": "name: x\n\tdatasets: [digits]\n",
    "lr-inf": _training("lr: .inf"),
    "lr-nan": _training("lr: .nan"),
    "lr-minus-inf": _training("lr: -.inf"),
    "lr-overflow-string": _training("lr: '1.0e400'"),
    "lr-bool": _training("lr: true"),
    "min-delta-nan": _training("min_delta: .nan"),
    "phi-inf": GOOD + "repair: {phi: .inf}\n",
    "guard-timeout-inf": GOOD + "resources: {guard_timeout_s: .inf}\n",
    "guard-poll-nan": GOOD + "resources: {guard_poll_s: .nan}\n",
    "max-bad-fraction-nan": GOOD.replace("[digits]", "[{name: digits, max_bad_fraction: .nan}]"),
    "options-inf": GOOD.replace(
        "[digits]", "[{name: 'pkg.mod:load', num_classes: 2, options: {x: [1, .inf]}}]"
    ),
    "seed-10e30": GOOD.replace("seeds: [1]", "seeds: [1000000000000000000000000000000]"),
    "seed-2e63": GOOD.replace("seeds: [1]", f"seeds: [{2**63}]"),
    "seed-5000-digits": GOOD.replace("seeds: [1]", f"seeds: [{'9' * 5000}]"),
    "seed-hex-huge": GOOD.replace("seeds: [1]", "seeds: [0x1fffffffffffffffffff]"),
    "seed-true": GOOD.replace("seeds: [1]", "seeds: [true]"),
    "seed-yes": GOOD.replace("seeds: [1]", "seeds: [1, yes]"),
    "seed-float": GOOD.replace("seeds: [1]", "seeds: [1.5]"),
    "seed-negative": GOOD.replace("seeds: [1]", "seeds: [-1]"),
    "seed-date": GOOD.replace("seeds: [1]", "seeds: [2024-01-01]"),
    "seed-bad-date": GOOD.replace("seeds: [1]", "seeds: [2024-02-30]"),
    "seed-string": GOOD.replace("seeds: [1]", "seeds: ['1']"),
    "seeds-mapping": GOOD.replace("seeds: [1]", "seeds: {a: 1}"),
    "epochs-bool": GOOD.replace("max_epochs: 1", "max_epochs: true"),
    "epochs-inf": GOOD.replace("max_epochs: 1", "max_epochs: .inf"),
    "epochs-huge": GOOD.replace("max_epochs: 1", f"max_epochs: {10**30}"),
    "early-stopping-int": _training("early_stopping: 1"),
    "vram-bool": GOOD + "resources: {min_free_vram: true}\n",
    "vram-huge": GOOD + "resources: {min_free_vram: 100000000PiB}\n",
    "vram-inf": GOOD + "resources: {min_free_vram: .inf}\n",
    "parallelism-2e31": GOOD + f"kubernetes: {{parallelism: {2**31}}}\n",
    "split-seed-2e32": GOOD.replace("[digits]", f"[{{name: digits, split_seed: {2**32}}}]"),
    "too-many-runs": "name: many\n"
    "datasets: [{name: digits, label: a}, {name: digits, label: b}, {name: digits, label: c}]\n"
    f"models: [small_cnn, {{name: small_cnn, label: m}}]\nseeds: {list(range(20_000))}\n",
    "unicode-garbage": _unicode_garbage(),
    "unicode-name": GOOD.replace("name: hostile", "name: 'ℌ𝔢𝔩𝔩𝔬\u202eevil'"),
    "unicode-key": GOOD + '"evil\\nkey\\u2028\\u0007": 1\n',
    "control-chars": GOOD.replace("name: hostile", 'name: "\\e[31mred\\a"'),
    "name-too-long": GOOD.replace("name: hostile", "name: " + "x" * 41),
    "traversal-name": GOOD.replace("name: hostile", "name: ../../etc"),
    "traversal-label": GOOD.replace("[digits]", "[{name: digits, label: ../x}]"),
    "traversal-dataset": GOOD.replace("[digits]", "['../../etc/passwd']"),
    "endpoint-credentials": GOOD
    + f"results: s3://bucket/x\nstorage: {{endpoint_url: 'http://{CREDS}minio:9000'}}\n",
    "endpoint-credentials-local": GOOD + f"storage: {{endpoint_url: 'https://{CREDS}minio'}}\n",
    "endpoint-garbage": GOOD + "storage: {endpoint_url: 'http://[::1'}\n",
    "results-credentials": GOOD + f"results: 's3://{CREDS}bucket/x'\n",
    "results-nul": GOOD + 'results: "res\\0ults"\n',
    "results-unknown-user": GOOD + "results: ~nosuchuser-early-repair/x\n",
    "results-ftp": GOOD + "results: ftp://host/x\n",
    "results-bad-bucket": GOOD + "results: s3://Bad_Bucket/x\n",
    "unknown-field": GOOD + "trainin: {lr: 0.1}\n",
    "wrong-type": GOOD.replace("max_epochs: 1", "max_epochs: many"),
    "unknown-model": GOOD.replace("[small_cnn]", "[resnet]"),
}
# Paths that are no sweep file at all ({in} is the inputs folder).
SPEC_PATHS = {
    "missing": "{in}/nope.yaml",
    "folder": "{in}/folder",
    "dev-zero": "/dev/zero",
    "dev-null": "/dev/null",
    "symlink-loop": "{in}/loop.yaml",
    "empty-path": "",
}
SPEC_COMMANDS = {
    "run": ["run", "{spec}"],  # the spec's own results: "results" in the case's folder
    "plan": ["plan", "{spec}"],
    "submit": ["submit", "{spec}", "--dry-run"],
    "trainer": ["trainer", "--sweep", "{spec}", "--run-index", "0"],
}

BAD_NAMES = {
    "dotdot-slash": "../x",
    "dotdot": "..",
    "absolute": "/etc/passwd",
    "upper": "Bad_Name",
    "long": "x" * 100,
    "empty": "",
    "newline": "a\nb",
    "unicode": "ünïcødé",
    "shell": "x;rm -rf ~",
    "nul": "x\x00y",
}

CASES: dict[str, dict[str, Any]] = {}


def case(case_id: str, argv: list[str], **options: Any) -> None:
    assert case_id not in CASES, case_id
    CASES[case_id] = {"argv": argv, **options}


for _spec in [*SPECS, *SPEC_PATHS]:
    for _cmd, _argv in SPEC_COMMANDS.items():
        case(f"{_cmd}:{_spec}", _argv, spec=_spec, torch=_cmd == "trainer")

_GOOD, _GOOD_S3 = "{in}/good.yaml", "{in}/good-s3.yaml"
for _id, _flags in {
    "results-unknown-user": ["--results", "~nosuchuser-early-repair/x"],
    "results-a-file": ["--results", "{in}/a-file"],
    "results-under-a-file": ["--results", "{in}/a-file/sub"],
    "results-empty": ["--results", ""],
    "results-ftp": ["--results", "ftp://host/x"],
    "results-file-host": ["--results", "file://host/x"],
    "results-credentials": ["--results", f"s3://{CREDS}bucket/x"],
    "results-unparsable": ["--results", "s3://[bucket/x"],
    "results-dotdot-prefix": ["--results", "s3://bucket/a/../../b"],
    "endpoint-credentials": ["--results", "s3://bucket/x", "--endpoint-url", f"http://{CREDS}h:9"],
    "endpoint-unparsable": ["--results", "s3://bucket/x", "--endpoint-url", "http://[::1"],
    "endpoint-no-scheme": ["--results", "s3://bucket/x", "--endpoint-url", "minio:9000"],
    "endpoint-for-a-folder": ["--results", "{cwd}/results", "--endpoint-url", "http://h:9"],
    "workers-zero": ["--results", "{cwd}/results", "--workers", "0"],
    "workers-inf": ["--results", "{cwd}/results", "--workers", "1e400"],
    "unknown-flag": ["--frobnicate"],
}.items():
    case(f"run-flag:{_id}", ["run", _GOOD, *_flags])
for _id, _env in {
    "cache-is-a-file": {"XDG_CACHE_HOME": "{in}/a-file"},
    "cache-under-a-file": {"XDG_CACHE_HOME": "{in}/a-file/cache"},
    "state-is-a-file": {"EARLY_REPAIR_STATE_DIR": "{in}/a-file"},
    "state-under-a-file": {"EARLY_REPAIR_STATE_DIR": "{in}/a-file/state"},
}.items():
    case(f"run-env:{_id}", ["run", _GOOD, "--results", "{cwd}/results"], env=_env)

case("plan-flag:out-a-folder", ["plan", _GOOD_S3, "--out", "{in}/folder"])
case("plan-flag:out-under-a-file", ["plan", _GOOD_S3, "--out", "{in}/a-file/objects.yaml"])
case("plan-flag:namespace-upper", ["plan", _GOOD_S3, "--namespace", "Bad_NS"])
case("plan-flag:namespace-traversal", ["plan", _GOOD_S3, "--namespace", "../x"])
case("submit-flag:namespace-traversal", ["submit", _GOOD_S3, "--dry-run", "--namespace", "../x"])
case("submit-flag:no-cluster", ["submit", _GOOD_S3, "--dry-run", "--context", "nope"])

for _cmd in ("status", "logs", "cancel"):
    for _name_id, _name in BAD_NAMES.items():
        case(f"{_cmd}:name-{_name_id}", [_cmd, _name])
        case(f"{_cmd}-local:name-{_name_id}", [_cmd, _name, "--local"])
    case(f"{_cmd}-local:never-run", [_cmd, "never-run", "--local"])
    case(f"{_cmd}:no-cluster", [_cmd, "hostile"])
for _cmd in ("status", "logs"):
    case(f"{_cmd}:endpoint-credentials", [_cmd, "hostile", "--endpoint-url", f"http://{CREDS}h"])
    case(f"{_cmd}:endpoint-garbage", [_cmd, "hostile", "--endpoint-url", "not a url"])
case("logs-local:run-traversal", ["logs", "never-run", "--local", "--run", "../y"])

_OUT = ["--out", "{cwd}/report"]
for _id, _argv in {
    "missing": ["{in}/nope", *_OUT],
    "a-file": ["{in}/a-file", *_OUT],
    "dev-zero": ["/dev/zero", *_OUT],
    "empty-folder": ["{in}/folder", *_OUT],
    # Damaged results are reported, not fatal - unless --strict asks for exit 2.
    "binary-tree-strict": ["{in}/binary-tree", "--strict", *_OUT],
    "results-credentials": [f"s3://{CREDS}bucket/x", *_OUT],
    "endpoint-credentials": ["s3://bucket/x", "--endpoint-url", f"http://{CREDS}h:9", *_OUT],
    "endpoint-for-a-folder": ["{in}/folder", "--endpoint-url", "http://h:9", *_OUT],
    "ftp": ["ftp://host/x", *_OUT],
    "unicode-garbage": [_unicode_garbage()[:200], *_OUT],
    "alpha-nan": ["{in}/folder", "--alpha", "nan", *_OUT],
    "alpha-two": ["{in}/folder", "--alpha", "2", *_OUT],
    "alpha-minus-inf": ["{in}/folder", "--alpha", "-inf", *_OUT],
    "max-figures-negative": ["{in}/folder", "--max-figures", "-1", *_OUT],
    "after-convergence-bogus": ["{in}/folder", "--after-convergence", "bogus", *_OUT],
    "sweep-traversal": ["{in}/folder", "--sweep", "../x", *_OUT],
    "out-a-file": ["{in}/folder", "--out", "{in}/a-file"],
}.items():
    case(f"aggregate:{_id}", ["aggregate", *_argv])

_PREP = ["--out", "{cwd}/prepared"]
for _id, _argv in {
    "unknown-dataset": ["mnist", "--input", "{in}/folder", *_PREP],
    "traversal-dataset": ["../x", "--input", "{in}/folder", *_PREP],
    "input-missing": ["gtsrb", "--input", "{in}/nope", *_PREP],
    "input-a-file": ["gtsrb", "--input", "{in}/a-file", *_PREP],
    "input-dev-zero": ["rsna", "--input", "/dev/zero", *_PREP],
    "input-empty-folder": ["gtsrb", "--input", "{in}/folder", *_PREP],
    "input-empty-folder-rsna": ["rsna", "--input", "{in}/folder", *_PREP],
    "input-binary-tree": ["gtsrb", "--input", "{in}/binary-tree", *_PREP],
    "output-credentials": ["gtsrb", "--input", "{in}/folder", "--out", f"s3://{CREDS}b/x"],
    "output-empty": ["gtsrb", "--input", "{in}/folder", "--out", ""],
    "output-a-file": ["gtsrb", "--input", "{in}/folder", "--out", "{in}/a-file"],
    "endpoint-credentials": [
        "gtsrb",
        "--input",
        "{in}/folder",
        "--out",
        "s3://b/x",
        "--endpoint-url",
        f"http://{CREDS}h:9",
    ],
    "split-seed-huge": ["gtsrb", "--input", "{in}/folder", "--split-seed", str(10**30), *_PREP],
    "split-seed-negative": ["gtsrb", "--input", "{in}/folder", "--split-seed", "-1", *_PREP],
    "max-bad-fraction-nan": [
        "gtsrb",
        "--input",
        "{in}/folder",
        "--max-bad-fraction",
        "nan",
        *_PREP,
    ],
    "max-bad-fraction-two": ["gtsrb", "--input", "{in}/folder", "--max-bad-fraction", "2", *_PREP],
    "image-size-zero": ["gtsrb", "--input", "{in}/folder", "--image-size", "0", *_PREP],
    "image-size-huge": ["gtsrb", "--input", "{in}/folder", "--image-size", str(10**30), *_PREP],
    "workers-zero": ["gtsrb", "--input", "{in}/folder", "--workers", "0", *_PREP],
}.items():
    case(f"prepare:{_id}", ["prepare", *_argv], torch=True)

for _id, (_argv, _env) in {
    "index-huge": (["--run-index", str(10**30)], {}),
    "index-negative": (["--run-index", "-5"], {}),
    "index-out-of-range": (["--run-index", "1"], {}),
    "index-not-a-number": (["--run-index", "one"], {}),
    "env-index-inf": ([], {"JOB_COMPLETION_INDEX": "1e400"}),
    "env-index-text": ([], {"JOB_COMPLETION_INDEX": "x"}),
    "env-index-empty": ([], {"JOB_COMPLETION_INDEX": ""}),
    "env-index-arabic-digit": ([], {"JOB_COMPLETION_INDEX": "\u0663"}),  # int() reads 3
    "no-index": ([], {}),
}.items():
    case(f"trainer-flag:{_id}", ["trainer", "--sweep", _GOOD, *_argv], env=_env, torch=True)

case("schema:extra-argument", ["schema", "extra"])
case("schema:unknown-flag", ["schema", "--bogus"])
case("top:unknown-command", ["frobnicate"])


def make_inputs(root: Path) -> None:
    root.mkdir()
    for name, content in SPECS.items():
        data = content if isinstance(content, bytes) else content.encode()
        (root / f"{name}.yaml").write_bytes(data)
    (root / "good.yaml").write_text(GOOD)
    (root / "good-s3.yaml").write_text(
        GOOD + "results: s3://bucket/x\nstorage: {endpoint_url: 'http://127.0.0.1:9'}\n"
    )
    (root / "folder").mkdir()
    (root / "a-file").write_text("not a folder\n")
    (root / "loop.yaml").symlink_to(root / "loop.yaml")
    tree = root / "binary-tree" / "hostile" / "run-s1"  # a results/raw-data lookalike
    tree.mkdir(parents=True)
    for i, name in enumerate(["run.json", "metrics.json", "00000.ppm", "GT-00000.csv"]):
        (tree / name).write_bytes(random.Random(i).randbytes(300))


def expand(value: str, inputs: Path, cwd: Path, spec: str | None) -> str:
    if spec is not None and value == "{spec}":
        return (
            SPEC_PATHS[spec].format(**{"in": inputs})
            if spec in SPEC_PATHS
            else (str(inputs / f"{spec}.yaml"))
        )
    return value.replace("{in}", str(inputs)).replace("{cwd}", str(cwd))


def run_batch(tmp: Path, name: str, ids: list[str], preload: list[str]) -> dict[str, Any]:
    """Every case of ``ids`` in as few processes as possible: one, unless a case kills it."""
    inputs = tmp / "inputs"
    cases = []
    for n, case_id in enumerate(ids):
        spec = CASES[case_id]
        cwd = tmp / "cases" / f"{name}-{n}"
        cwd.mkdir(parents=True)
        env = {"XDG_CACHE_HOME": str(cwd / "cache"), "XDG_CONFIG_HOME": str(cwd / "config")}
        env.update({k: expand(v, inputs, cwd, None) for k, v in spec.get("env", {}).items()})
        argv = [expand(a, inputs, cwd, spec.get("spec")) for a in spec["argv"]]
        cases.append({"id": case_id, "argv": argv, "cwd": str(cwd), "env": env})
    home = tmp / "home"  # never created: nothing may be written under $HOME either
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBE"))},
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "support")]),
        "HOME": str(home),
        "KUBECONFIG": str(tmp / "no-kubeconfig"),
        "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE",
        "AWS_SECRET_ACCESS_KEY": "fake-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # A case that reached the network would meet a closed local port at once.
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_MAX_ATTEMPTS": "1",
        "MALLOC_ARENA_MAX": "2",  # per-thread malloc arenas would eat the address space
        "OMP_NUM_THREADS": "1",
    }
    # The session's state folder (tests/conftest.py) would override each case's own cache.
    env.pop("EARLY_REPAIR_STATE_DIR", None)
    env.pop("JOB_COMPLETION_INDEX", None)
    got: dict[str, Any] = {}
    for attempt in range(len(cases)):
        todo = [c for c in cases if c["id"] not in got]
        if not todo:
            break
        batch = {"preload": preload, "memory": 2 * GiB, "timeout_s": 120, "cases": todo}
        (tmp / f"{name}-{attempt}.json").write_text(json.dumps(batch))
        out = tmp / f"{name}-{attempt}-results.jsonl"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "early_repair_testing.cli_batch",
                str(tmp / f"{name}-{attempt}.json"),
                str(out),
            ],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=120 * len(todo) + 60,  # a safety net only
        )
        lines = out.read_text().splitlines() if out.exists() else []
        got.update((r["id"], r) for r in map(json.loads, lines))
        if proc.returncode != 0 and len(lines) < len(todo):  # this case took the process down
            crashed = todo[len(lines)]["id"]
            died = f"the process died ({proc.returncode}): {proc.stderr[-3000:]}"
            got[crashed] = {"id": crashed, "escaped": died}
    got[f"{name}:home"] = sorted(str(p) for p in home.rglob("*")) if home.exists() else []
    return got


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("hostile")
    make_inputs(tmp / "inputs")
    light = [i for i, c in CASES.items() if not c.get("torch")]
    heavy = [i for i, c in CASES.items() if c.get("torch")]
    got = run_batch(tmp, "control-plane", light, [])
    got.update(run_batch(tmp, "trainer", heavy, ["trainer_image.entrypoint"]))
    return got


@pytest.mark.parametrize("batch", ["control-plane", "trainer"])
def test_nothing_is_written_under_home(outcomes: dict[str, Any], batch: str) -> None:
    assert outcomes[f"{batch}:home"] == []


@pytest.mark.parametrize("case_id", list(CASES))
def test_hostile_input_exits_2_with_one_line(outcomes: dict[str, Any], case_id: str) -> None:
    r = outcomes[case_id]
    assert r["escaped"] is None, r["escaped"]
    assert r["code"] == 2, (r["code"], r["stderr"][-2000:])
    lines = r["stderr"].splitlines()
    assert len(lines) <= 1, r["stderr"][-2000:]
    assert "Traceback" not in r["stderr"] + r["stdout"]
    assert r["stdout"] == ""
    assert r["created"] == [], r["created"]
    assert SECRET not in r["stderr"] and KEY_ID not in r["stderr"]
