"""headlines(table): one row per trained comparison, its best pair read against chance, its null and
its random-init controls, from tables of real compare runs with and without controls."""

import math

import numpy as np
import pandas as pd
import pytest
from controls_helpers import write_control_cache

from repalign.compare import StatsOptions, compare_controls, compare_models, headlines
from repalign.errors import RepalignError
from repalign.table import read_table, write_table


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_control_cache(tmp_path_factory.mktemp("headline") / "c.h5")


@pytest.fixture(scope="module")
def with_controls(cache):
    return compare_controls(cache, "ta", "tb", ["mknn", "unbiased_cka"], "0-4", k=5).table


def test_plain_table_gives_its_best_rows_and_no_contrast(cache):
    table = compare_models(cache, "ta", "tb", ["mknn", "unbiased_cka"], k=5,
                           stats=StatsOptions(permutations=19, seed=2)).table
    out = headlines(table)
    assert list(out.metric) == ["mutual_knn", "unbiased_cka"]
    for _, row in out.iterrows():
        best = table[(table.metric == row.metric) & table.best].iloc[0]
        assert (row.layer_a, row.layer_b, row.score) == (best.layer_a, best.layer_b, best.score)
        assert row.p_value_best == best.p_value_best and row.null_mean == best.null_mean
        # the permutation p of the pair is not the headline's p: that is the rank test against controls
        for column in ("control_mean", "control_sd", "n_seeds", "difference", "ci_low", "ci_high", "p_value",
                       "min_p_value", "p_value_adjusted"):
            assert math.isnan(row[column])
    assert "emb" not in set(out.layer_a) | set(out.layer_b)  # the hidden family's best pair


def test_table_with_controls_reads_its_best_contrast_rows(with_controls):
    out = headlines(with_controls)
    assert len(out) == 2  # one per trained comparison: the controls' rows are not comparisons of their own
    trained = with_controls[with_controls.level == "trained"]
    contrast = with_controls[(with_controls.level == "contrast") & with_controls.best]
    for _, row in out.iterrows():
        best = trained[(trained.metric == row.metric) & trained.best].iloc[0]
        c = contrast[contrast.metric == row.metric].iloc[0]
        assert (row.layer_a, row.layer_b, row.score) == (best.layer_a, best.layer_b, best.score)
        # the control mean is the mean of each seed's own best score, computed here from its rows
        seeds = with_controls[(with_controls.level == "random_init") & (with_controls.metric == row.metric)
                              & with_controls.best]
        np.testing.assert_allclose(row.control_mean, seeds.score.mean(), rtol=1e-12)
        np.testing.assert_allclose(row.difference, row.score - seeds.score.mean(), rtol=1e-12)
        assert row.n_seeds == 5 and row.min_p_value == pytest.approx(1 / 6)
        assert row.p_value == c.p_value and row.p_value_adjusted == c.p_value_adjusted


def test_headlines_of_a_table_read_back_from_csv(with_controls, tmp_path):
    path = write_table(with_controls, tmp_path / "t.csv")
    back = headlines(read_table(path))
    pd.testing.assert_frame_equal(back[["metric", "layer_a", "layer_b"]], headlines(with_controls)[["metric", "layer_a", "layer_b"]])
    np.testing.assert_allclose(back.control_mean, headlines(with_controls).control_mean, rtol=1e-12)


def test_concatenated_comparisons_give_one_row_each(cache, with_controls):
    baseline = compare_controls(cache, "ta", "fb", ["mknn"], [0, 1, 2], k=5).table
    plain = compare_models(cache, "tb", "fb", ["mknn"], k=5).table  # no level column: its rows are trained
    out = headlines(pd.concat([with_controls, baseline, plain], ignore_index=True))
    assert list(zip(out.model_a, out.model_b, out.metric)) == [
        ("ta", "tb", "mutual_knn"), ("ta", "tb", "unbiased_cka"), ("ta", "fb", "mutual_knn"), ("tb", "fb", "mutual_knn")]
    assert list(out.n_seeds.fillna(0)) == [5, 5, 3, 0]


def test_a_table_without_best_rows_is_refused(cache):
    table = compare_models(cache, "ta", "tb", ["mknn"], k=5).table.drop(columns=["best"])
    with pytest.raises(RepalignError, match="no row marked best"):
        headlines(table)
    with pytest.raises(RepalignError, match="lacks the column"):
        headlines(table.drop(columns=["score"]))


def test_each_size_subset_and_k_of_a_curves_table_is_a_comparison(cache):
    from repalign.compare import compare_curves

    table = compare_curves(cache, "ta", "tb", ["mknn"], ks=[5, 10], sizes=[40], repeats=2).table
    out = headlines(table)
    best = table[table.best]
    assert len(out) == len(best) == 6  # (2 subsets of 40 + all 80) x 2 k
    merged = out.merge(best, on=["n_samples", "subset", "k", "metric"], suffixes=("", "_table"))
    assert len(merged) == 6 and (merged.score == merged.score_table).all()
    assert (merged.layer_a == merged.layer_a_table).all() and (merged.layer_b == merged.layer_b_table).all()
