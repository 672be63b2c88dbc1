"""What each file that ``aggregate`` writes next to the report holds, as the report's last
section lists it (``report.FILES``).

Kept apart from report.py: it is reference text, as long as a section, that changes only
when a table or figure gains a file or a column.
"""

FILES = [
    "`headline.csv`: the headline per (dataset, model, method, class, α): `n` seeds, `k`"
    " (earlier won, the paper's count), `k_beyond_noise` (of those, beyond test-set noise) of"
    " `n_tested` units with predictions, `harm_wins`, `beat_unrepaired`,"
    " `best_beats_unrepaired` (best repaired model above the unrepaired converged one),"
    " `mean_gain`, `seed_min`/`seed_max`, `seed_ci_low`/`seed_ci_high` (95% bootstrap CI over"
    " seeds, only with n ≥ 5), `wilcoxon_p`/`wilcoxon_n` and `wilcoxon_note` (when n cannot"
    " reach p < 0.05), `seeds_needed` (seeds for 80% power of a paired t-test at 0.05 given"
    " the observed mean and SD of per-seed gains), `mean_offset` (CI with n ≥ 5) and the"
    " sentence (`text`).",
    "`effects.csv`: per repaired model and α, against the unrepaired model of its checkpoint:"
    " `qual_before/after`, `delta_qual`, `delta_acc`, `delta_acc_class`, `rr`, `br`,"
    " `seconds`, `harmed`; `no_op` (the patch changed no repair-set prediction), `accepted`"
    " (kept by `repair.accept`), `test_fixed`/`test_broken` (test images turned right/wrong).",
    "`regressions.parquet`: every test image each repair fixed or broke (run, method, class,"
    " epoch, example index, true label, prediction before and after, change).",
    "`methods.csv`: means over seeds per (dataset, model, class, checkpoint, method, α);"
    " checkpoint `convergence` = each seed's convergence checkpoint.",
    "`records.parquet`, `records.csv`: one row per evaluated model (base and repaired) with"
    " every field of its metrics.json; `per_class_accuracy` expanded into `acc_class_<c>`"
    " columns (empty where a class is absent), plus `n_classes`, `run_complete` and the"
    " store `key`.",
    "`quality.csv`: Qual(α, c) per model and α; `acc_class` is Acc_c, `accuracy` Acc_total;"
    " base models appear once per class their run repairs.",
    "`switch_points.csv`: per (dataset, model, method, run, class, α) `best_epoch`,"
    " `reference_epoch`, `offset` (best − reference), `pattern`, `best_qual`,"
    " `reference_qual`, `gain`, `earlier_gain`, `base_reference_qual` (unrepaired),"
    " `reference_harmed`, `harm_win`, `beats_unrepaired`, `n_compared`, `tied_epochs`,"
    " `status`, `missing_epochs`, `note`; and the paired test of the best earlier checkpoint"
    " against the reference: `n_discordant` (test examples the two disagree on), `p_value`"
    " (exact sign-flip, Holm-adjusted over the unit's earlier checkpoints), `beyond_noise`,"
    " `gain_ci_low`/`gain_ci_high` (class-stratified paired bootstrap over test examples,"
    " given the selection; `gain_ci_method`: percentile of resamples, or for very large"
    " sweeps the normal interval from the exact bootstrap variance).",
    "`patterns.csv`: Table 1 per method - scope `dataset` rows (model and class `all`) and"
    " scope `model-class` rows; beside the paper's counts `pre_beyond_noise` of `tested`"
    " units, and `n_compared_min`/`n_compared_max` (checkpoints a unit compared).",
    "`runs.csv`: one row per run; `problems.csv`: every incomplete or damaged result.",
    "`readiness.csv` (sweeps with `training.readiness`): per (dataset, model, policy, method,"
    " class, α) `n` and the mean with 95% CI (`_ci_low`/`_ci_high`) of `regret`, `gain`,"
    " `epochs_saved` (per track); `readiness_runs.csv`: the same per run and track, with"
    " `fired_epoch`, `policy_epoch`, `oracle_epoch`, `convergence_epoch`, the three Quals,"
    " `unrepaired_convergence_qual` and `beats_unrepaired`; `readiness_stops.csv`: per run"
    " the epoch `action: stop` ends training (`stop_epoch`, when every track fired) and the"
    " `epochs_saved` of the run.",
    "`figures/`: `effect_*.png`, `seeds_*.png`, `aligned_*.png` per (dataset, model, class),"
    " `table1.png`,"
    " `overview.png`, `fig3_<run>_class<c>.png`, `fig4_<run>_class<c>.png`,"
    " `readiness_<dataset>_<model>.png` (with `training.readiness`); each also as `.pdf`"
    " and `.svg` beside the PNG (`--formats`; fonts embedded in the PDF, text as outlines in"
    " the SVG).",
    "`table1.tex`, `headline.tex`: Table 1 and the headline as LaTeX tables (booktabs: put"
    " `\\usepackage{booktabs}` in the preamble, then `\\input{table1.tex}`).",
    "`costs.csv` (runs that recorded costs): per (dataset, model, method) the CPU seconds of"
    " training, features and repair, in total and per run, wall seconds, GPU-hours,"
    " `repair_vs_train` and the epochs a record-only readiness policy would have saved;"
    " `costs_runs.csv`: every stage of every run (`count`, `wall_s`, `cpu_s`, `gpu_s`).",
]
