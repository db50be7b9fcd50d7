"""The sequence ablation with the nested selection run on each sequence subset (``kimap train --nested-ablation``)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from test_model_selection import SMALL_GRID, arrays, complementary_table

from KiMapLib.app import commands
from KiMapLib.model import training
from KiMapLib.model.metrics import regression_metrics
from KiMapLib.model.plots import sequence_ablation as plot_ablation
from KiMapLib.model.reports import nested_sequence_ablation, sequence_ablation
from KiMapLib.model.selection import nested_lopo
from KiMapLib.model.training import TrainingConfig, train


@pytest.fixture(scope="module")
def problem():
    rows = complementary_table(patients=7, biopsies=6)
    return rows, *arrays(rows)


def test_each_subset_gets_its_own_nested_selection(problem):
    _, matrix, target, groups, columns = problem
    nested_all = nested_lopo(matrix, target, groups, SMALL_GRID, n_jobs=1)
    ablation = nested_sequence_ablation(matrix, target, groups, columns, SMALL_GRID, n_jobs=1,
                                        all_columns=nested_all)
    fixed = sequence_ablation(matrix, target, groups, columns, nested_all.final, n_jobs=1)
    assert ablation["nested"] and not fixed["nested"]
    assert set(ablation) == set(fixed)
    assert list(ablation["without"]) == list(fixed["without"]) == ["t1c", "flair", "adc"]
    assert ablation["all"]["rmse"] == pytest.approx(regression_metrics(target, nested_all.outer_predicted)["rmse"])
    # a subset's score is the outer score of a selection run on that subset alone
    only_t1c = np.array([c.startswith("t1c_") for c in columns])
    alone = nested_lopo(matrix[:, only_t1c], target, groups, SMALL_GRID, final=False, n_jobs=1)
    assert ablation["only"]["t1c"]["rmse"] == pytest.approx(regression_metrics(target, alone.outer_predicted)["rmse"])
    assert ablation["only"]["t1c"]["fold_winners"] == alone.winner_counts()
    for entry in (ablation["all"], *ablation["without"].values(), *ablation["only"].values()):
        assert sum(entry["fold_winners"].values()) == 7  # one winner per outer (patient) fold
    assert ablation["without"]["adc"]["r2"] < ablation["all"]["r2"] - 0.2  # adc carries what t1c does not
    assert ablation["only"]["flair"]["r2"] < 0.1


def test_reusing_the_training_selection_changes_nothing(problem):
    _, matrix, target, groups, columns = problem
    reused = nested_sequence_ablation(matrix, target, groups, columns, SMALL_GRID, n_jobs=1,
                                      all_columns=nested_lopo(matrix, target, groups, SMALL_GRID, n_jobs=1))
    fresh = nested_sequence_ablation(matrix, target, groups, columns, SMALL_GRID, n_jobs=1)
    assert reused == fresh


def test_train_option_and_report(problem, monkeypatch, tmp_path):
    rows = problem[0]
    monkeypatch.setattr(training, "default_grid", lambda *_: list(SMALL_GRID))
    calls = []
    original = training.nested_sequence_ablation
    monkeypatch.setattr(training, "nested_sequence_ablation", lambda *a, **k: calls.append(1) or original(*a, **k))
    default = train(rows, TrainingConfig(n_jobs=1), model_id="test-fixed-ablation")
    assert calls == [] and default.report["sequence_ablation"]["nested"] is False
    assert default.card["cv"]["sequence_ablation"]["nested"] is False
    nested = train(rows, TrainingConfig(n_jobs=1, nested_ablation=True), model_id="test-nested-ablation")
    assert calls == [1]
    ablation = nested.report["sequence_ablation"]
    assert ablation["nested"] is True and ablation["scheme"].startswith("nested leave-one-patient-out")
    assert nested.card["cv"]["sequence_ablation"] == {"scheme": ablation["scheme"], "nested": True}
    assert ablation["all"]["rmse"] == pytest.approx(nested.report["cv"]["rmse"])  # the training's own selection
    plot_ablation(ablation, tmp_path / "sequence_ablation.png")
    assert (tmp_path / "sequence_ablation.png").stat().st_size > 1000


def test_cli_flag():
    parser = argparse.ArgumentParser()
    commands.add_parser(parser.add_subparsers())
    base = ["train", "--features", "t.csv", "--out", "m"]
    assert parser.parse_args(base).nested_ablation is False
    assert parser.parse_args([*base, "--nested-ablation"]).nested_ablation is True
