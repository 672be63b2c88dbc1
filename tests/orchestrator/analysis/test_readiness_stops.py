"""What a readiness policy saves per run (a run stops only when every track has fired) beside
the per-track figure, whether the policy's repaired model beats the unrepaired converged
model, and the watched values drawn on their own axis - on trees worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from early_repair_testing.aggregate_tree import RunTree, write_run
from matplotlib.figure import Figure

from orchestrator.analysis import readiness
from orchestrator.analysis.aggregate import aggregate
from orchestrator.analysis.load import load
from orchestrator.analysis.report import build
from orchestrator.analysis.watched import draw_watched, pp_axis
from orchestrator.store.file import FileStore

SWEEP = "stops"
EPOCHS = [1, 2, 3, 4, 5, 6]
Q3 = [0.6, 0.7, 0.8, 0.75, 0.9, 0.85]
Q8 = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]


def track(cls: int, fired: int | None, ready: int, scores: list) -> dict:
    return {
        "method": "arachne",
        "repair_class": cls,
        "fired_epoch": fired,
        "ready_epoch": ready,
        "best_score": 0.5,
        "evaluations": 6,
        "scores": scores,
    }


def run(name: str, seed: int, tracks: list[dict]) -> RunTree:
    repaired = {(e, 3): (q, q) for e, q in zip(EPOCHS, Q3, strict=True)}
    repaired |= {(e, 8): (q, q) for e, q in zip(EPOCHS, Q8, strict=True)}
    return RunTree(
        run=name,
        convergence=4,
        epochs=EPOCHS,
        classes=[3, 8],
        repaired=repaired,
        # The unrepaired model at convergence (4): Acc 0.7, Acc_3 0.7, Acc_8 0.9.
        base={4: (0.7, {3: 0.7, 8: 0.9})},
        seed=seed,
        online=True,
        readiness={
            "policy": "repaired-val-qual",
            "action": "record",
            "alpha": 0.5,
            "stopped_training": False,
            "tracks": tracks,
        },
    )


WATCHED = [[1, 0.5], [2, 0.6], [3, None], [4, 0.58], [5, 0.55], [6, 0.54]]
RUNS = [
    # class 3 fires at 3, class 8 at 5: the run would stop at 5 of 6 trained - 1 epoch saved,
    # while the tracks save 3 and 1 (mean 2).
    run("s1", 1, [track(3, 3, 3, WATCHED), track(8, 5, 4, WATCHED)]),
    # class 8 never fires: the run would never stop - 0 saved; the tracks save 4 and 0.
    run("s2", 2, [track(3, 2, 2, WATCHED), track(8, None, 1, WATCHED)]),
]


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    store = FileStore(tmp_path / "results")
    for t in RUNS:
        write_run(store, SWEEP, t)
    return store


def test_a_run_saves_what_its_last_track_to_fire_allows(store: FileStore) -> None:
    loaded = load(store)
    tracks = readiness.per_run(loaded)
    stops = readiness.per_run_stops(loaded, tracks).set_index("run")
    assert stops.loc["s1", ["tracks", "tracks_fired", "stop_epoch", "epochs_trained"]].tolist() == [
        2,
        2,
        5,
        6,
    ]
    assert stops.loc["s1", "epochs_saved"] == 1.0
    assert stops.loc["s1", "track_epochs_saved_mean"] == pytest.approx((3 + 1) / 2)
    assert stops.loc["s2", "tracks_fired"] == 1 and stops.loc["s2", "epochs_saved"] == 0.0
    assert str(stops.loc["s2", "stop_epoch"]) == "<NA>"  # never
    assert stops.loc["s2", "track_epochs_saved_mean"] == pytest.approx((4 + 0) / 2)


def test_each_track_says_whether_it_beats_the_unrepaired_converged_model(store: FileStore) -> None:
    got = readiness.per_run(load(store)).set_index(["run", "repair_class"])
    # Unrepaired at convergence: class 3 Qual 0.5*0.7 + 0.5*0.7 = 0.7; class 8 0.8.
    assert got.loc[("s1", 3), "unrepaired_convergence_qual"] == pytest.approx(0.7)
    assert got.loc[("s1", 8), "unrepaired_convergence_qual"] == pytest.approx(0.8)
    # s1: class 3 repaired at 3 (0.8) beats 0.7; class 8 at 4 (0.6) does not beat 0.8.
    assert bool(got.loc[("s1", 3), "beats_unrepaired"])
    assert not bool(got.loc[("s1", 8), "beats_unrepaired"])
    # s2: class 3 at 2 (0.7) does not beat 0.7 (a tie is no win); class 8 at 1 (0.9) does.
    assert not bool(got.loc[("s2", 3), "beats_unrepaired"])
    assert bool(got.loc[("s2", 8), "beats_unrepaired"])


def test_the_report_sets_per_run_beside_per_track(store: FileStore, tmp_path: Path) -> None:
    agg = aggregate(store, alphas=(0.5,))
    md = build(agg, tmp_path / "out", max_figures=0).markdown(tmp_path / "out")
    assert "Mean epochs saved per run: 0.50 over 2 runs (per track: 2.00)" in md
    assert "epochs saved per track" in md
    assert "in 2 of 4 tracks" in md


def test_watched_values_are_loaded_and_drawn_on_their_own_axis(store: FileStore) -> None:
    loaded = load(store)
    assert loaded.readiness["scores"].iloc[0] == [tuple(p) for p in WATCHED]
    rows = readiness.per_run(loaded)
    rows = rows[rows["repair_class"] == 3]
    fig = Figure()
    ax = fig.subplots()
    ax.plot([1, 6], [70, 75])
    pp_axis(ax)
    draw_watched(ax, loaded.readiness, rows, "arachne", 3, "repaired-val-qual")
    assert len(fig.axes) == 2  # the watched values' own axis
    right = fig.axes[1]
    curves = [ln for ln in right.get_lines() if ln.get_linestyle() == ":"]
    assert len(curves) == 2  # one per seed; the None value left out
    assert list(curves[0].get_xdata()) == [1, 2, 4, 5, 6]
    assert list(curves[0].get_ydata()) == pytest.approx([50, 60, 58, 55, 54])
    # 1 pp differences are visible: a tick every percentage point on both axes.
    ticks = ax.get_yticks()
    assert float(np.diff(ticks).min()) == pytest.approx(1.0)
    fired = [ln for ln in right.get_lines() if ln.get_marker() == "x"]
    # s2 fired at 2; s1 fired at 3, an epoch whose value was not finite: nothing to mark.
    assert [list(ln.get_xdata()) for ln in fired] == [[2]]
