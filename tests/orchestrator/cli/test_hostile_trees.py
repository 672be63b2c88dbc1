"""`aggregate` against hostile and damaged results trees, in a folder and in S3 (moto).

Every case is one `early-repair aggregate` subprocess under a memory cap (``prlimit --as``)
and a time limit (``timeout``): it must exit 0 with the damage listed in problems.csv, or
exit 2 with one line on stderr - never a traceback, a hang, an abort or an exhausted
machine. Around each case the whole case folder (the tree, the working folder, a decoy
folder a hostile name points at) is snapshotted: nothing may appear or change outside the
output folder (and matplotlib's cache folder). Cases whose damage is a copy of good data
must give exactly the clean tree's tables.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from early_repair_testing.aggregate_tree import RunTree, pattern_run, write_tree
from early_repair_testing.packed_records import offsets_past_values
from early_repair_testing.paths import REPO
from early_repair_testing.s3_server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    boto_client,
    moto_subprocess,
)

from orchestrator.results import layout
from orchestrator.results.records import load_run_records
from orchestrator.store.file import FileStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit"),
]

SWEEP = "hostile"
MEMORY_CAP = 3 << 30  # address space of the whole process, imports included
TIME_LIMIT_S = 240  # a safety net against a hang, not a speed target
FLAGS = ["--alpha", "0.5", "--max-figures", "1"]
TABLES = ["headline.csv", "patterns.csv", "switch_points.csv", "effects.csv", "quality.csv"]
R1 = "r-1"


def clean_runs() -> list[RunTree]:
    return [
        pattern_run(R1, "pre", seed=1),
        pattern_run("r-2", "post", seed=2),
        pattern_run("r-3", "pre", seed=3),
    ]


class Tree:
    """One results tree being damaged: a folder or an S3 prefix, written through the store."""

    def __init__(self, case: Path, s3: tuple[str, str] | None) -> None:
        self.case = case
        self.s3 = s3  # (endpoint, bucket)
        if s3 is None:
            self.store: Any = FileStore(case / "tree")
            self.uri = str(case / "tree")
        else:
            from orchestrator.store.s3 import S3Store

            self.store = S3Store(s3[1], case.name, endpoint_url=s3[0])
            self.uri = f"s3://{s3[1]}/{case.name}"

    def put(self, key: str, data: bytes) -> None:
        self.store.write_bytes(key, data)

    def get(self, key: str) -> bytes:
        return self.store.read_bytes(key)

    def raw_put(self, key: str, data: bytes) -> None:
        """An object at exactly ``key`` (below the tree), unchecked."""
        assert self.s3 is not None
        boto_client(self.s3[0]).put_object(
            Bucket=self.s3[1], Key=f"{self.case.name}/{key}", Body=data
        )

    def path(self, key: str) -> Path:
        assert self.s3 is None, "folder cases only"
        return self.case / "tree" / key


def base_key(epoch: int, run: str = R1) -> str:
    return layout.base_metrics(SWEEP, run, epoch)


def repair_key(epoch: int, run: str = R1, method: str | None = None) -> str:
    return layout.repair_metrics(SWEEP, run, epoch, 3, method)


def record(t: Tree, key: str) -> dict[str, Any]:
    return json.loads(t.get(key))


def rewrite_records(t: Tree, change: Callable[[Any], Any], **write: Any) -> None:
    """Rewrite R1's records.arrow: ``change(table) -> table``, written with ``write``
    (e.g. compression)."""
    import pyarrow as pa

    key = layout.records(SWEEP, R1)
    table = change(load_run_records(t.get(key)).table)
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(**write)
    with pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    t.put(key, sink.getvalue().to_pybytes())


# --- the damage -------------------------------------------------------------------------


def name_absolute(t: Tree) -> None:
    t.put(layout.sweep_json(SWEEP), json.dumps({"name": str(t.case / "decoy" / "x")}).encode())


def name_dotdot(t: Tree) -> None:
    t.put(layout.sweep_json(SWEEP), json.dumps({"name": "../../decoy/x"}).encode())


def arrow_zstd_bomb(t: Tree) -> None:
    """Ten million per-class values in one record, compressed to a few KB."""
    import pyarrow as pa

    def bomb(table: Any) -> Any:
        values = table.column("per_class_accuracy").to_pylist()
        values[0] = [0.0] * 10_000_000
        i = table.schema.get_field_index("per_class_accuracy")
        column = pa.array(values, table.schema.field(i).type)
        return table.set_column(i, table.schema.field(i), column)

    rewrite_records(t, bomb, compression="zstd")


def arrow_duplicated(t: Tree) -> None:
    """Every record twice, the copies claiming a perfect model."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def twice(table: Any) -> Any:
        copy = table.set_column(
            table.schema.get_field_index("accuracy"),
            table.schema.field("accuracy"),
            pa.array([1.0] * len(table)),
        )
        n = pc.list_value_length(table.column("per_class_accuracy")).to_pylist()
        copy = copy.set_column(
            table.schema.get_field_index("per_class_accuracy"),
            table.schema.field("per_class_accuracy"),
            pa.array([[1.0] * k for k in n], table.schema.field("per_class_accuracy").type),
        )
        return pa.concat_tables([copy, table])

    rewrite_records(t, twice)


def arrow_huge_string(t: Tree) -> None:
    import pyarrow as pa

    def huge(table: Any) -> Any:
        names = table.column("dataset").to_pylist()
        names[0] = "d" * (64 << 20)
        i = table.schema.get_field_index("dataset")
        return table.set_column(i, table.schema.field(i), pa.array(names, pa.string()))

    rewrite_records(t, huge)


def arrow_truncated(t: Tree) -> None:
    key = layout.records(SWEEP, R1)
    data = t.get(key)
    t.put(key, data[: len(data) // 2])


def arrow_bad_offsets(t: Tree) -> None:
    """The predictions' last list offset points past their values: the file's layout and
    columns are sound, only Arrow's full check of its buffers finds the damage."""
    key = layout.records(SWEEP, R1)
    t.put(key, offsets_past_values(t.get(key)))


def json_huge_per_class(t: Tree) -> None:
    rec = record(t, base_key(5))
    rec["per_class_accuracy"] = [0.5] * 2_000_000
    t.put(base_key(5), json.dumps(rec).encode())


def json_huge_string(t: Tree) -> None:
    rec = record(t, base_key(5))
    rec["dataset"] = "d" * (100 << 20)
    t.put(base_key(5), json.dumps(rec).encode())


def json_duplicate_keys(t: Tree) -> None:
    """``accuracy`` twice: a reader that keeps the last one would see a perfect model."""
    text = t.get(repair_key(5)).decode().rstrip().rstrip("}")
    t.put(repair_key(5), (text + ', "accuracy": 1.0}').encode())


def json_deep(t: Tree) -> None:
    t.put(base_key(5), b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")


def json_int_overflow(t: Tree) -> None:
    rec = record(t, base_key(5))
    rec["seed"] = 10**30
    t.put(base_key(5), json.dumps(rec).encode())


def per_class_mismatch(t: Tree) -> None:
    rec = record(t, repair_key(5))
    rec["per_class_accuracy"] = rec["per_class_accuracy"] + [1.0]
    t.put(repair_key(5), json.dumps(rec).encode())


def same_record_twice(t: Tree) -> None:
    """An identical copy at another key that names the same record (epoch 5, class 3)."""
    t.put(repair_key(5, method="arachne"), t.get(repair_key(5)))


def same_record_conflict(t: Tree) -> None:
    rec = record(t, repair_key(10))
    rec["accuracy"] = 1.0
    t.put(repair_key(10, method="arachne"), json.dumps(rec).encode())


def link_dev_zero(t: Tree) -> None:
    t.path(base_key(5)).unlink()
    t.path(base_key(5)).symlink_to("/dev/zero")


def fifo(t: Tree) -> None:
    t.path(repair_key(5)).unlink()
    os.mkfifo(t.path(repair_key(5)))


def link_out_of_tree(t: Tree) -> None:
    """A valid record, but outside the tree: whatever the link points at is not results."""
    outside = t.case / "outside.json"
    outside.write_bytes(t.get(repair_key(5)))
    t.path(repair_key(5)).unlink()
    t.path(repair_key(5)).symlink_to(outside)


def folders_for_files(t: Tree) -> None:
    for key in (repair_key(5), layout.run_json(SWEEP, R1)):
        t.path(key).unlink()
        t.path(key).mkdir()


def _rename(t: Tree, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite every record (and the packed files) with ``change`` applied."""
    for run in (R1, "r-2", "r-3"):
        for key in t.store.list(f"{SWEEP}/{run}/"):
            if key.endswith("metrics.json"):
                rec = json.loads(t.get(key))
                change(rec)
                t.put(key, json.dumps(rec).encode())


def long_name(t: Tree) -> None:
    _rename(t, lambda r: r.update(dataset="d" * 250))


def terminal_injection(t: Tree) -> None:
    _rename(t, lambda r: r.update(dataset="\x1b]0;pwned\x07\x1b[2J\x1b[31mdigits\u202e"))
    name_sweep = {"name": SWEEP, "description": "\x1b]52;c;ZXZpbA==\x07 owned"}
    t.put(layout.sweep_json(SWEEP), json.dumps(name_sweep).encode())


def markdown_injection(t: Tree) -> None:
    _rename(
        t,
        lambda r: r.update(
            dataset="![t](http://evil.example/t.png)",
            model='<img src="http://evil.example/x.png">',
        ),
    )


def dotdot_keys(t: Tree) -> None:
    """Keys that S3 holds but that name other objects than they seem."""
    t.raw_put(f"{SWEEP}/../{SWEEP}/{R1}/epoch_005/base/metrics.json", t.get(base_key(5)))
    t.raw_put(f"{SWEEP}/../../x/metrics.json", b"{}")
    t.raw_put(f"{SWEEP}/r-9//epoch_001/base/metrics.json", t.get(base_key(5)))


@dataclass
class Case:
    damage: Callable[[Tree], None]
    packed: bool = False
    code: int = 0
    kinds: set[str] = field(default_factory=set)  # problem kinds that must be listed
    same_tables: bool = False  # exactly the clean tree's tables
    message: str = ""  # exit 2: a part of the one line
    out: bool = True  # pass --out (else the default folder, named by the tree)
    strict: bool = False
    s3: bool = True  # also run against S3
    sweep_uri: bool = False  # the URI names the sweep's folder: its name is sweep.json's


CASES: dict[str, Case] = {
    "name-absolute": Case(name_absolute, code=2, message="--out", out=False, sweep_uri=True),
    "name-dotdot": Case(name_dotdot, code=2, message="--out", out=False, sweep_uri=True),
    "arrow-zstd-bomb": Case(arrow_zstd_bomb, packed=True, kinds={"damaged"}, same_tables=True),
    "arrow-duplicated": Case(arrow_duplicated, packed=True, kinds={"duplicate"}, same_tables=True),
    "arrow-huge-string": Case(arrow_huge_string, packed=True, kinds={"bad-value"}, s3=False),
    "arrow-truncated": Case(arrow_truncated, packed=True, kinds={"damaged"}, same_tables=True),
    "arrow-bad-offsets": Case(arrow_bad_offsets, packed=True, kinds={"damaged"}, same_tables=True),
    "json-huge-per-class": Case(json_huge_per_class, kinds={"too-large"}),
    "json-huge-string": Case(json_huge_string, kinds={"too-large"}),
    "json-duplicate-keys": Case(json_duplicate_keys, kinds={"duplicate"}),
    "json-duplicate-keys-strict": Case(
        json_duplicate_keys, code=2, strict=True, message="appears twice", s3=False
    ),
    "json-deep": Case(json_deep, kinds={"damaged"}, s3=False),
    "json-int-overflow": Case(json_int_overflow, kinds={"damaged"}, s3=False),
    "per-class-mismatch": Case(per_class_mismatch, kinds={"bad-value"}, s3=False),
    "same-record-twice": Case(same_record_twice, kinds={"duplicate"}, same_tables=True),
    "same-record-conflict": Case(same_record_conflict, kinds={"duplicate"}, s3=False),
    "link-dev-zero": Case(link_dev_zero, kinds={"not-a-file"}, s3=False),
    "fifo": Case(fifo, kinds={"not-a-file"}, s3=False),
    "link-out-of-tree": Case(link_out_of_tree, kinds={"not-a-file"}, s3=False),
    "folders-for-files": Case(folders_for_files, kinds={"not-a-file"}, s3=False),
    "long-name": Case(long_name),
    "terminal-injection": Case(terminal_injection),
    "markdown-injection": Case(markdown_injection, s3=False),
}
S3_ONLY = {"dotdot-keys": Case(dotdot_keys, kinds={"unsafe-key"}, same_tables=True)}


# --- running a case ---------------------------------------------------------------------


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int, int]]:
    """Every path below ``root`` (links not followed) but those below ``skip``."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
        for name in [*dirs, *files]:
            st = os.lstat(Path(dirpath, name))
            out[str(Path(dirpath, name).relative_to(root))] = (
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
            )
    return out


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    out: Path


def aggregate(t: Tree, case: Case) -> Result:
    cwd, out, cache = t.case / "cwd", t.case / "out", t.case / "cache"
    for p in (cwd, t.case / "decoy"):
        p.mkdir(exist_ok=True)
    home = t.case / "home"  # never created: nothing may be written there either
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "HOME": str(home),
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "XDG_CACHE_HOME": str(cache),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    argv = ["aggregate", f"{t.uri}/{SWEEP}" if case.sweep_uri else t.uri, *FLAGS]
    if t.s3 is not None:
        argv += ["--endpoint-url", t.s3[0]]
    if case.out:
        argv += ["--out", str(out)]
    if case.strict:
        argv += ["--strict"]
    command = [
        "prlimit",
        f"--as={MEMORY_CAP}",
        "--",
        "timeout",
        "-s",
        "KILL",
        str(TIME_LIMIT_S),
        sys.executable,
        "-m",
        "orchestrator.cli",
        *argv,
    ]
    before = snapshot(t.case, {out, cache})
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, timeout=TIME_LIMIT_S + 60)
    after = snapshot(t.case, {out, cache})
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert changed == [], f"written outside the output folder: {changed[:10]}"
    assert not home.exists()
    return Result(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
        out,
    )


def build(case_dir: Path, s3: tuple[str, str] | None, packed: bool) -> Tree:
    case_dir.mkdir(parents=True)
    t = Tree(case_dir, s3)
    write_tree(t.store, SWEEP, clean_runs(), packed=packed)
    return t


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, str]]:
    with moto_subprocess() as (endpoint, _delayed):
        bucket = f"hostile-{os.getpid()}"
        boto_client(endpoint).create_bucket(Bucket=bucket)
        yield endpoint, bucket


@pytest.fixture(scope="module")
def clean_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The tables of the undamaged tree (read file by file; packed gives the same)."""
    t = build(tmp_path_factory.mktemp("clean") / "case", None, packed=False)
    r = aggregate(t, Case(lambda _t: None))
    assert r.code == 0, r.stderr
    return {name: (r.out / name).read_bytes() for name in TABLES}


def check(r: Result, case: Case, clean: dict[str, bytes]) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert r.code == case.code, (r.code, r.stderr[-3000:])
    assert "\x1b" not in r.stderr + r.stdout and "\x07" not in r.stderr + r.stdout
    if case.code == 2:
        assert len(r.stderr.splitlines()) == 1, r.stderr
        assert case.message in r.stderr, r.stderr
        assert r.stdout == ""
        if not case.out:
            assert not (r.out.parent / "cwd" / "report").exists()
        return
    problems = pd.read_csv(r.out / "problems.csv")
    assert case.kinds <= set(problems["kind"]), problems.to_string()
    assert (r.out / "report.md").is_file() and (r.out / "report.html").is_file()
    for f in (r.out / "figures").iterdir():
        assert len(f.name.encode()) <= 255 and f.name.isprintable(), f.name
    for name in TABLES if case.same_tables else []:
        assert (r.out / name).read_bytes() == clean[name], name


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_tree_in_a_folder(name: str, tmp_path: Path, clean_tables: dict[str, bytes]):
    """Each damaged folder tree: exit 0 with the damage listed, or exit 2 with one line;
    nothing written outside the output folder, within the memory cap and time limit."""
    case = CASES[name]
    t = build(tmp_path / "case", None, case.packed)
    case.damage(t)
    r = aggregate(t, case)
    check(r, case, clean_tables)
    if name == "markdown-injection":
        md = (r.out / "report.md").read_text()
        assert "<img" not in md and not re.search(r"(?<!\\)\]\(http", md)
        assert "evil.example" in md  # the names are still shown, as text
    if name == "fifo":
        assert "FIFO" in (r.out / "problems.csv").read_text()


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.s3] + list(S3_ONLY))
def test_hostile_tree_in_s3(
    name: str,
    tmp_path: Path,
    moto: tuple[str, str],
    s3_env: None,
    clean_tables: dict[str, bytes],
):
    """The same corpus as objects in S3 (moto on loopback), where it applies, plus keys
    only a bucket can hold ('..' parts, '//')."""
    case = CASES.get(name) or S3_ONLY[name]
    t = build(tmp_path / name, moto, case.packed)
    case.damage(t)
    check(aggregate(t, case), case, clean_tables)
