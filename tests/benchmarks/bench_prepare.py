"""Benchmark: ``early-repair prepare rsna`` on a generated tree of a few thousand DICOMs.

Why: preparing is meant to stream - decode one file at a time into one
preallocated array and write the splits in chunks - so that memory stays near the size of
the prepared arrays, not the raw images (let alone twice). This measures it, with the
throughput, on the Kaggle layout at a realistic scale.

Tree: ``--n`` DICOMs (default 3000) of ``--size`` x ``--size`` (default 256) 16-bit
MONOCHROME2 pixels (12 bits stored, values 0..4095: outside 0..255, so every image is
rescaled), smooth random images with noise, ~30% labelled 1 with one to three box rows per
positive patient; written with pydicom (uncompressed, proper file meta).

Measured, each phase in a fresh process (``python bench_prepare.py --child ...``):
- prepare: ``orchestrator.cli.main(["prepare", "rsna", ...])`` into a folder store, once per
  ``--workers`` value (decode threads; default 1 and 2);
- load: ``trainer_image.data.rsna.load`` of those prepared splits (download to a temporary
  folder, sha256 check, stratified validation hold-out) - what each training pod does.
Peak memory is the resident-set high-water mark (``VmHWM`` in ``/proc/self/status``, the
value ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` reports, but resettable), reset with
``5 > /proc/self/clear_refs`` after the imports, so "above start" is the phase's own memory.
It is set against the size of the prepared image arrays (sum of the x.npy files) and the
size of the raw pixel data.

Run: ``python tests/benchmarks/bench_prepare.py [--n 3000] [--size 256] [--workers 1 2]``
(``--keep DIR`` generates the tree there once and reuses it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MiB = 2**20
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def status_kib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> float:
    """Reset the RSS high-water mark; return the RSS now (MiB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        print("warning: cannot reset the peak RSS mark; peaks include imports", file=sys.stderr)
    return (status_kib("VmRSS") or 0.0) / 1024


def peak_mib() -> float:
    hwm = status_kib("VmHWM")
    if hwm is not None:
        return hwm / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_tree(root: Path, n: int, size: int, seed: int = 0) -> float:
    """The Kaggle layout with ``n`` generated DICOMs; returns the raw pixel MiB."""
    from pydicom.dataset import Dataset, FileMetaDataset

    rng = np.random.default_rng(seed)
    images = root / "stage_2_train_images"
    images.mkdir(parents=True)
    rows = ["patientId,x,y,width,height,Target"]
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        pid = f"{i:08d}-bench"
        label = int(rng.random() < 0.3)
        a, b, c = rng.uniform(-3, 3, size=3)
        smooth = 2048 + 900 * np.sin(a * xx + b * yy + c)
        pixels = np.clip(smooth + rng.normal(0, 60, (size, size)), 0, 4095).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
        ds.SOPClassUID = SECONDARY_CAPTURE
        ds.PatientID = pid
        ds.Modality = "CR"
        ds.set_pixel_data(pixels, "MONOCHROME2", 12)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(images / f"{pid}.dcm", enforce_file_format=True)
        if label:
            rows += [f"{pid},{10 * k},{20},{30},{40},1" for k in range(1 + i % 3)]
        else:
            rows.append(f"{pid},,,,,0")
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    return n * size * size * 2 / MiB


def child(phase: str, raw: str, out: str, image_size: int, workers: int) -> dict[str, Any]:
    # Imports first: their memory is the process's baseline, not the phase's.
    import pydicom.pixels  # noqa: F401 - its decoders belong to the baseline
    import rich.progress  # noqa: F401

    from orchestrator.cli import main
    from orchestrator.spec import DatasetSpec
    from trainer_image.data import prepared, rsna  # noqa: F401

    start_rss = reset_peak()
    t0 = time.perf_counter()
    if phase == "prepare":
        args = ["prepare", "rsna", "--input", raw, "--out", out]
        try:
            main([*args, "--image-size", str(image_size), "--workers", str(workers)])
        except SystemExit as e:
            if e.code not in (0, None):
                raise RuntimeError(f"prepare exited with {e.code}") from e
    else:
        spec = DatasetSpec(name="rsna", prepared=out, image_size=image_size)
        splits = rsna.load(spec, 0.2)
        assert len(splits.train) > 0
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "start_mib": start_rss,
        "peak_mib": peak_mib(),
        "torch_imported": "torch" in sys.modules,
    }


def run_child(phase: str, raw: Path, out: Path, image_size: int, workers: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", phase, str(raw), str(out), str(image_size)]
    cmd.append(str(workers))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="DICOM files to generate")
    parser.add_argument("--size", type=int, default=256, help="side of the raw images")
    parser.add_argument("--image-size", type=int, default=160, help="prepared side (paper)")
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="decode threads")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        phase, raw, out, image_size, workers = args.child
        print(json.dumps(child(phase, raw, out, int(image_size), int(workers))))
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    raw, out = work / "raw", work / "prepared"
    try:
        if not (raw / "stage_2_train_labels.csv").exists():
            t0 = time.perf_counter()
            raw_mib = write_tree(raw, args.n, args.size)
            print(
                f"generated {args.n} DICOMs of {args.size}x{args.size} uint16 in"
                f" {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
        else:
            raw_mib = args.n * args.size * args.size * 2 / MiB
        results = []
        for workers in args.workers:
            shutil.rmtree(out, ignore_errors=True)
            results.append(
                (f"prepare -w{workers}", run_child("prepare", raw, out, args.image_size, workers))
            )
        results.append(("load (pod)", run_child("load", raw, out, args.image_size, 1)))
        manifest = json.loads((out / "manifest.json").read_text())
        arrays_mib = sum(s["files"]["x"]["bytes"] for s in manifest["splits"].values()) / MiB
        files_mib = sum(p.stat().st_size for p in (raw / "stage_2_train_images").iterdir()) / MiB
        images = manifest["images"]
        torch_seen = any(r["torch_imported"] for _, r in results)
        print(
            f"prepare rsna: {images} DICOMs {args.size}x{args.size} -> 1x{args.image_size}x"
            f"{args.image_size} uint8 ({os.cpu_count()} CPUs; torch imported: {torch_seen})"
        )
        print(f"  raw pixel data        {raw_mib:8.1f} MiB  (files on disk {files_mib:.1f} MiB)")
        print(f"  prepared image arrays {arrays_mib:8.1f} MiB")
        for name, r in results:
            above = r["peak_mib"] - r["start_mib"]
            print(
                f"  {name:<11} wall {r['seconds']:6.2f} s  {images / r['seconds']:7.0f} images/s"
                f"  peak RSS {r['peak_mib']:7.1f} MiB, above start {above:7.1f} MiB"
                f" = {above / arrays_mib:4.2f} x prepared arrays, {above / raw_mib:4.2f} x raw"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
