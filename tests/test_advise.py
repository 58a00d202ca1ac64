"""``lossdsl advise``: each rule on data built to trigger it and on data built not to, every spec
it writes checked and compiled (and called on synthetic inputs), and bad input as exit 2 + one line.

Expected values are derived here from their definitions (AutoGluon's thresholds, Cui et al.'s
effective number, scipy's MAD and kurtosis), never copied from advise's own output."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lossdsl
from lossdsl import cli
from lossdsl.advise import CLASS_BALANCED_BETA, HUBER_K, advise, infer_task, parse_metric
from lossdsl.datafiles import DataError, read_table
from lossdsl.synthetic import synthetic_inputs


def assert_valid(spec: str) -> lossdsl.LossModule:
    """The spec passes the checks, compiles, and its module gives a finite loss with a gradient on
    synthetic inputs of its declared kinds and shapes."""
    plan = lossdsl.check(lossdsl.parse(spec), spec)
    assert not [w for w in plan.warnings if w.code != "W003"], plan.warnings
    loss_fn = lossdsl.compile(spec)
    inputs = synthetic_inputs(loss_fn.plan)
    pred = inputs["pred"].requires_grad_(True)
    value = loss_fn(**inputs)
    assert torch.isfinite(value)
    value.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    return loss_fn


def reason(advice, rule: str):
    found = [r for r in advice.reasons if r.rule == rule]
    assert found, f"no reason for {rule!r}: {advice.reasons}"
    return found[-1]


def data_term(advice) -> str:
    match = re.search(r"^let data = (.*)$", advice.spec, re.M)
    assert match, advice.spec
    return match.group(1)


def number_list(text: str, key: str) -> list[float]:
    match = re.search(rf"{key}=\[([^\]]*)\]", text)
    assert match, text
    return [float(v) for v in match.group(1).split(",")]


RNG = np.random.default_rng(14)


# -- rule 1: the task --------------------------------------------------------------------------------


def test_two_values_are_binary_whatever_their_type():
    for target in (np.array([0, 1] * 50), np.array([2.5, 7.0] * 50), np.array(["no", "yes"] * 50)):
        advice = advise(target=target)
        assert advice.task == "binary"
        assert reason(advice, "task").why.startswith("2 distinct values")
        assert_valid(advice.spec)


def test_few_integer_values_are_multiclass_by_autogluons_rule():
    # 3,000 rows (> 1,000: AutoGluon's 5% limit), 5 distinct integers: 0.17% of rows.
    advice = advise(target=RNG.integers(0, 5, 3000))
    assert advice.task == "multiclass"
    assert "5 distinct values, 0.17% of 3,000 rows" in reason(advice, "task").why
    assert "logits[N, 5]" in advice.spec
    assert_valid(advice.spec)


def test_many_integer_values_are_regression():
    # 3,000 rows, 300 distinct integers: 10% of rows > AutoGluon's 5% for data above 1,000 rows.
    target = np.arange(3000) % 300
    task, why = infer_task(target)
    assert task == "regression" and "300 distinct (10.0% of 3,000 rows" in why


def test_small_data_uses_autogluons_ten_percent_limit():
    # 1,000 rows: the limit is 10%; 60 distinct integers (6%) are classes, 120 (12%) are not.
    assert infer_task(np.arange(1000) % 60)[0] == "multiclass"
    assert infer_task(np.arange(1000) % 120)[0] == "regression"


def test_real_values_are_regression_and_several_01_columns_multilabel():
    assert infer_task(RNG.normal(size=500))[0] == "regression"
    matrix = (RNG.random((500, 3)) < 0.3).astype(int)
    assert infer_task(matrix)[0] == "multilabel"
    advice = advise(target={"a": matrix[:, 0], "b": matrix[:, 1], "c": matrix[:, 2]})
    assert advice.task == "multilabel" and "multihot[N, 3]" in advice.spec
    assert_valid(advice.spec)


def test_a_target_column_that_is_not_01_is_named():
    """advise and compare share infer_task: the message names the first column that is not 0/1 and a value."""
    labels = np.array([[0, 1, 0], [1, 0, 3], [1, 1, 0]])
    with pytest.raises(DataError, match=r"target column 'c' holds 3, not 0/1"):
        advise(target={"a": labels[:, 0], "b": labels[:, 1], "c": labels[:, 2]})
    with pytest.raises(DataError, match=r"column 2 of the target holds 3, not 0/1"):
        infer_task(labels)


def test_task_override_and_its_checks():
    labels = np.arange(3000) % 5
    assert advise(target=labels, task="regression").task == "regression"
    assert reason(advise(target=labels, task="regression"), "task").why.startswith("given (--task regression)")
    with pytest.raises(DataError, match="binary needs exactly 2"):
        advise(target=labels, task="binary")
    with pytest.raises(DataError, match="non-integer values"):
        advise(target=RNG.normal(size=100), task="multiclass")
    with pytest.raises(DataError, match="unknown task"):
        advise(target=labels, task="ranking")


def test_tensors_are_accepted():
    advice = advise(target=torch.tensor([0, 1, 1, 0, 1]))
    assert advice.task == "binary"


def test_one_value_and_text_regression_targets_are_refused():
    with pytest.raises(DataError, match="one value only"):
        advise(target=np.ones(100))
    with pytest.raises(DataError, match="not numeric"):
        advise(target=np.array(["a", "b", "c"] * 10), task="regression")
    with pytest.raises(DataError, match="too many to be classes"):
        advise(target=np.array([f"id{i}" for i in range(500)]))


def test_column_names_become_input_names_sanitised_where_needed():
    target = np.array([0, 1] * 20)
    assert "income: binary[N]" in advise(target={"income": target}).spec
    spec = advise(target={"2nd label-x": target}).spec
    assert "c_2nd_label_x: binary[N]" in spec and "renamed" in spec
    assert "pred_col: binary[N]" in advise(target={"pred": target}).spec  # pred is the model's output
    assert "and_col: binary[N]" in advise(target={"and": target}).spec  # a reserved word
    assert_valid(advise(target={"2nd label-x": target}).spec)


def test_metric_parsing():
    assert parse_metric("pinball@0.9") == ("pinball", 0.9)
    assert parse_metric("F2") == ("fbeta", 2.0)
    assert parse_metric("AUC") == ("roc_auc", None)
    with pytest.raises(DataError, match="did you mean 'recall'"):
        parse_metric("recal")
    with pytest.raises(DataError, match=r"in \(0, 1\)"):
        parse_metric("pinball@1.5")
    with pytest.raises(DataError, match="does not fit a binary task"):
        advise(target=np.array([0, 1] * 10), metric="mae")


def test_json_holds_the_statistics_and_reasons():
    advice = advise(target=np.array([0] * 80 + [1] * 20))
    data = json.loads(json.dumps(advice.to_json()))
    assert data["task"] == "binary"
    assert data["stats"]["classes"]["counts"] == [80, 20]
    assert data["stats"]["classes"]["imbalance_ratio"] == 4.0
    assert [r["rule"] for r in data["reasons"]][:2] == ["task", "imbalance"]
    assert data["spec"] == advice.spec


# -- the command -------------------------------------------------------------------------------------


def write_csv(path, columns: dict[str, list]) -> None:
    names = list(columns)
    lines = [",".join(names)] + [",".join(str(v) for v in row) for row in zip(*columns.values())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_writes_a_spec_that_lossdsl_check_accepts(capsys, tmp_path):
    data = tmp_path / "credit.csv"
    write_csv(data, {"income": ["<=50K"] * 150 + [">50K"] * 50, "sex": ["f", "m"] * 100,
                     "age": list(range(200))})
    out_file = tmp_path / "advised.loss"
    status, out, err = run(capsys, "advise", data, "--target", "income", "--group", "sex", "-o", out_file)
    assert status == 0 and out == ""
    spec = out_file.read_text(encoding="utf-8")
    assert "income: binary[N]" in spec and "sex: group[N] of 2" in spec
    assert "0 = '<=50K', 1 = '>50K'" in spec
    assert "ratio 3.0 (largest class 150, smallest 50)" in spec
    assert run(capsys, "check", out_file)[0] == 0
    assert_valid(spec)


def test_cli_json_format(capsys, tmp_path):
    data = tmp_path / "y.csv"
    write_csv(data, {"y": [0, 1, 1, 1]})
    status, out, _ = run(capsys, "advise", data, "--format", "json")  # one column: the target
    assert status == 0
    report = json.loads(out)
    assert report["task"] == "binary" and report["stats"]["classes"]["counts"] == [1, 3]


@pytest.mark.parametrize("columns,argv,message", [
    ({"y": [0, 1]}, ["--target", "yy"], "no column 'yy'; did you mean 'y'? (columns: y)"),
    ({"y": [0, 1], "g": [0, 1]}, ["--target", "y", "--group", "sex"], "no column 'sex'"),
    ({"y": ["a", "b", "c"]}, ["--target", "y", "--task", "regression"], "target 'y' is not numeric (e.g. 'a')"),
    ({"y": [3, 3, 3]}, ["--target", "y"], "target 'y' has one value only (3)"),
    ({"y": [0, 1], "x": [1, 2]}, [], "name the target column with --target"),
    ({"y": [0, 1]}, ["--target", "y", "--metric", "recal"], "unknown metric 'recal'; did you mean 'recall'?"),
    ({"y": [0, 1], "w": [1, "x"]}, ["--target", "y", "--weight", "w"], "weight column 'w' is not numeric"),
    ({"y": [0, 1], "x": [1, 2]}, ["--target", "y", "--features", "x,z"], "no column 'z'"),
    ({"y": [0, 1]}, ["--target", "y", "-o", "/nonexistent-dir/out.loss"], "cannot write /nonexistent-dir/out.loss"),
])
def test_cli_bad_input_is_exit_2_with_one_line(capsys, tmp_path, columns, argv, message):
    data = tmp_path / "data.csv"
    write_csv(data, columns)
    status, out, err = run(capsys, "advise", data, *argv)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lossdsl advise: ") and message in err


def test_cli_empty_and_missing_files_are_exit_2(capsys, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    assert run(capsys, "advise", empty, "--target", "y")[2] == f"lossdsl advise: {empty}: the file is empty\n"
    header = tmp_path / "header.csv"
    header.write_text("y,x\n", encoding="utf-8")
    assert "has a header but no rows" in run(capsys, "advise", header, "--target", "y")[2]
    status, _, err = run(capsys, "advise", tmp_path / "absent.csv", "--target", "y")
    assert status == 2 and "no such file" in err


def test_cli_bad_input_shows_no_traceback_in_a_real_process(tmp_path):
    data = tmp_path / "data.csv"
    write_csv(data, {"y": ["a", "b", "c"]})
    result = subprocess.run([sys.executable, "-m", "lossdsl", "advise", str(data), "--target", "y",
                             "--task", "regression"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


# -- reading data files ------------------------------------------------------------------------------


def test_read_csv_types_each_column(tmp_path):
    data = tmp_path / "t.csv"
    data.write_text("a,b,c,d\n1,2.5,x,\n2,,y,3\n", encoding="utf-8")
    table = read_table(data)
    assert table["a"].dtype == np.int64 and table["a"].tolist() == [1, 2]
    assert table["b"].dtype == np.float64 and table["b"][0] == 2.5 and math.isnan(table["b"][1])
    assert table["c"].tolist() == ["x", "y"]
    assert math.isnan(table["d"][0]) and table["d"][1] == 3.0
    assert list(read_table(data, ["c", "a"])) == ["c", "a"]


def test_read_csv_problems(tmp_path):
    ragged = tmp_path / "r.csv"
    ragged.write_text("a,b\n1,2\n3\n", encoding="utf-8")
    with pytest.raises(DataError, match="row 3 has 1 cells, the header 2"):
        read_table(ragged)
    twice = tmp_path / "d.csv"
    twice.write_text("a,a\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="names column 'a' twice"):
        read_table(twice)
    with pytest.raises(DataError, match="unknown data format '.xlsx'"):
        (tmp_path / "x.xlsx").write_text("a", encoding="utf-8")
        read_table(tmp_path / "x.xlsx")


def test_read_npy_and_npz(tmp_path):
    masks = np.zeros((2, 4, 4), dtype=np.int64)
    np.save(tmp_path / "masks.npy", masks)
    table = read_table(tmp_path / "masks.npy")
    assert list(table) == ["masks"] and table["masks"].shape == (2, 4, 4)
    np.savez(tmp_path / "d.npz", y=np.array([0, 1]), x=np.ones((2, 3)))
    table = read_table(tmp_path / "d.npz")
    assert sorted(table) == ["x", "y"] and table["x"].shape == (2, 3)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="not a readable .npy"):  # never unpickled
        read_table(tmp_path / "obj.npy")


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"reading Parquet needs pyarrow \(pip install pyarrow\)"):
        read_table(tmp_path / "t.parquet")


# -- rule 2: class imbalance -------------------------------------------------------------------------


def cui_weights(counts, beta=CLASS_BALANCED_BETA):
    """Cui et al. (2019), eq. 4: weight (1 - beta) / (1 - beta^n), normalised to sum to C."""
    raw = np.array([(1 - beta) / (1 - beta ** n) for n in counts])
    return raw * len(counts) / raw.sum()


def test_balanced_classes_keep_plain_ce():
    advice = advise(target=np.array([0] * 60 + [1] * 40))  # ratio 1.5 < 3
    assert data_term(advice) == "ce()"
    assert reason(advice, "imbalance").why == "ratio 1.5 (largest class 60, smallest 40), smallest count 40: ratio < 3"
    assert_valid(advice.spec)


def test_moderate_imbalance_gives_balanced_weights():
    advice = advise(target=np.array([0] * 800 + [1] * 200))  # ratio 4
    assert data_term(advice) == "ce(weight=balanced)"
    assert "ratio 4.0 (largest class 800, smallest 200)" in advice.spec
    assert_valid(advice.spec)


def test_strong_imbalance_gives_class_balanced_weights():
    counts = [2000, 500, 100]  # ratio 20 >= 10
    target = np.repeat(np.arange(3), counts)
    advice = advise(target=target)
    weights = number_list(data_term(advice), "weight")
    assert weights == pytest.approx(cui_weights(counts), rel=1e-3)
    assert reason(advice, "imbalance").choice == "ce(weight=class-balanced, beta=0.9999)"
    assert_valid(advice.spec)


def test_a_tiny_class_gives_class_balanced_weights_below_the_ratio():
    counts = [100, 100, 15]  # ratio 6.7 < 10, but 15 rows < 20
    advice = advise(target=np.repeat(np.arange(3), counts))
    assert number_list(data_term(advice), "weight") == pytest.approx(cui_weights(counts), rel=1e-3)
    assert "smallest count < 20" in reason(advice, "imbalance").why
    assert_valid(advice.spec)


def test_extreme_imbalance_gives_focal_with_class_balanced_alpha():
    counts = [9900, 100]  # ratio 99 >= 50 (Datumaro's warning level)
    advice = advise(target=np.repeat(np.arange(2), counts))
    weights = cui_weights(counts)
    alpha = float(re.search(r"alpha=([0-9.e-]+)", data_term(advice)).group(1))
    assert alpha == pytest.approx(weights[1] / weights.sum(), rel=1e-3)
    assert data_term(advice).startswith("focal(gamma=2, alpha=")
    multiclass = advise(target=np.repeat(np.arange(3), [6000, 600, 100]))  # ratio 60
    assert number_list(data_term(multiclass), "alpha") == pytest.approx(cui_weights([6000, 600, 100]), rel=1e-3)
    assert_valid(advice.spec)
    assert_valid(multiclass.spec)


def test_sample_weights_count_in_the_class_totals():
    target = np.array([0] * 100 + [1] * 100)
    weight = np.where(target == 0, 4.0, 1.0)  # weighted totals 400 and 100: ratio 4
    advice = advise(target=target, weight={"w": weight})
    assert data_term(advice) == "ce(weight=balanced, sample_weight=w)"
    assert "w: weight[N]" in advice.spec and "by weight" in reason(advice, "imbalance").why
    assert_valid(advice.spec)


def test_multilabel_pos_weight_is_negatives_over_positives():
    rows = 1000
    matrix = np.zeros((rows, 3), dtype=int)
    matrix[:500, 0] = 1  # 500 / 500
    matrix[:100, 1] = 1  # 900 / 100
    matrix[-40:, 2] = 1  # 960 / 40
    advice = advise(target=matrix)
    assert number_list(data_term(advice), "pos_weight") == [1.0, 9.0, 24.0]
    assert advice.stats["co_occurring"] == []
    assert_valid(advice.spec)


def test_balanced_multilabel_keeps_plain_bce():
    matrix = (RNG.random((2000, 3)) < 0.45).astype(int)
    advice = advise(target=matrix)
    assert data_term(advice) == "bce()"


def test_strongly_co_occurring_labels_are_reported():
    rows = 1000
    first = (RNG.random(rows) < 0.3).astype(int)
    copy = first.copy()
    copy[:10] = 1 - copy[:10]  # nearly the same label
    other = (RNG.random(rows) < 0.3).astype(int)
    matrix = np.stack([first, other, copy], axis=1)
    advice = advise(target=matrix)
    both = int((first & copy).sum())
    either = int((first | copy).sum())
    (pair,) = advice.stats["co_occurring"]
    assert pair["labels"] == [0, 2] and pair["jaccard"] == pytest.approx(both / either)
    assert "labels 0 and 2 co-occur strongly" in advice.spec
    assert_valid(advice.spec)


# -- rule 3: regression ------------------------------------------------------------------------------


def test_regression_statistics_match_scipy():
    from lossdsl.advise import regression_stats

    y = RNG.standard_t(3, size=5000)
    stats = regression_stats(y)
    scale = scipy.stats.median_abs_deviation(y, scale="normal")  # MAD / 0.67449 = 1.4826 MAD
    assert stats["robust_scale"] == pytest.approx(scale, rel=1e-4)
    assert stats["excess_kurtosis"] == pytest.approx(scipy.stats.kurtosis(y, fisher=True, bias=True))
    assert stats["skewness"] == pytest.approx(scipy.stats.skew(y, bias=True))
    assert stats["outlier_share"] == pytest.approx(np.mean(np.abs(y - np.median(y)) / scale > 5))


def test_normal_targets_keep_mse_without_bounds():
    advice = advise(target=RNG.normal(size=2000))
    assert data_term(advice) == "mse()"
    assert "soft_bound" not in advice.spec
    assert reason(advice, "heavy tails").choice == "mse"
    assert_valid(advice.spec)


def test_heavy_tails_give_huber_with_delta_from_the_robust_scale():
    y = RNG.standard_t(2, size=2000)  # infinite variance: outliers far beyond robust z 5
    advice = advise(target=y)
    delta = HUBER_K * scipy.stats.median_abs_deviation(y, scale="normal")
    assert data_term(advice) == f"huber(delta={delta:.4g})"
    assert "beyond robust z 5" in reason(advice, "heavy tails").why
    assert_valid(advice.spec)


def test_metric_mae_pinball_and_rmse_choose_their_term():
    y = RNG.standard_t(2, size=1000)
    assert data_term(advise(target=y, metric="mae")) == "mae()"
    assert data_term(advise(target=y, metric="pinball@0.9")) == "quantile(q=0.9)"
    rmse = advise(target=y, metric="rmse")
    assert data_term(rmse) == "mse()" and "note" in reason(rmse, "metric").why  # heavy tails noted
    assert_valid(advise(target=y, metric="pinball@0.9").spec)


def test_never_negative_targets_get_a_lower_bound():
    y = RNG.normal(10, 1, size=1000)  # never negative, not skewed, no zeros
    advice = advise(target=y)
    assert "let bound = soft_bound(pred >= 0)" in advice.spec
    assert_valid(advice.spec)


def test_targets_in_the_unit_interval_get_both_bounds():
    advice = advise(target=RNG.random(1000))
    assert "let bound = soft_bound(0 <= pred <= 1)" in advice.spec
    assert_valid(advice.spec)


def test_a_cap_gives_an_upper_bound():
    y = np.minimum(RNG.normal(0, 1, size=1000), 1.5)  # about 6.7% of rows at the cap 1.5
    share = np.mean(y == 1.5)
    advice = advise(target=y)
    assert "let bound = soft_bound(pred <= 1.5)" in advice.spec
    assert f"a cap: {share:.1%} of rows at the maximum 1.5" in advice.spec
    assert_valid(advice.spec)


def test_many_zeros_or_a_long_right_tail_give_poisson_nll():
    zeros = np.where(RNG.random(2000) < 0.5, 0.0, RNG.gamma(2.0, 3.0, size=2000))
    advice = advise(target=zeros)
    assert data_term(advice) == "poisson_nll()" and "soft_bound" not in advice.spec
    assert f"{np.mean(zeros == 0):.0%} zeros" in reason(advice, "count / long tail").why
    tail = RNG.lognormal(0, 1.2, size=2000)  # skewness well above 2
    assert data_term(advise(target=tail)) == "poisson_nll()"
    counts = RNG.poisson(0.4, size=3000)  # few distinct integers: classes, unless told
    assert advise(target=counts).task == "multiclass"
    assert data_term(advise(target=counts, task="regression")) == "poisson_nll()"
    assert_valid(advice.spec)


def test_nan_in_a_regression_target_is_refused():
    y = RNG.normal(size=100)
    y[3] = np.nan
    with pytest.raises(DataError, match="holds 1 NaN or infinite value"):
        advise(target=y)


# -- rule 4: conflicting duplicate labels ------------------------------------------------------------


def noisy_duplicates(rows=1000, repeats=50):
    """Unique feature rows, then the first `repeats` of them again with the other label."""
    features = RNG.normal(size=(rows, 3))
    labels = (RNG.random(rows) < 0.5).astype(int)
    features = np.concatenate([features, features[:repeats]])
    labels = np.concatenate([labels, 1 - labels[:repeats]])
    return features, labels


def test_conflicting_duplicates_give_label_smoothing_from_the_conflict_rate():
    features, labels = noisy_duplicates()
    advice = advise(target=labels, features=features)
    # 50 pairs, each with one row off its majority (a tie counts one): 50 of 1,050 rows.
    rate = 50 / 1050
    assert advice.stats["duplicates"]["conflict_rate"] == pytest.approx(rate)
    assert advice.stats["duplicates"]["conflicting_rows"] == 100
    # two classes: smoothing e puts e / 2 on the other label, so e = 2 * rate
    assert data_term(advice) == f"ce(label_smoothing={2 * rate:.2g})"
    assert_valid(advice.spec)


def test_duplicates_with_the_same_label_and_no_features_give_no_smoothing():
    features, labels = noisy_duplicates()
    labels[1000:] = labels[:50]  # the repeats agree
    advice = advise(target=labels, features=features)
    assert "label_smoothing" not in advice.spec
    assert advice.stats["duplicates"]["conflict_rate"] == 0
    assert "duplicates" not in advise(target=labels).stats  # no features: no check


def test_coarse_features_and_id_columns_are_not_label_noise():
    labels = (RNG.random(2000) < 0.5).astype(int)
    coarse = {"sex": RNG.integers(0, 2, 2000), "band": RNG.integers(0, 5, 2000)}  # 10 distinct rows
    advice = advise(target=labels, features=coarse)
    assert "label_smoothing" not in advice.spec and "features are coarse" in reason(advice, "label noise").why
    features, labels = noisy_duplicates()
    with_id = {"id": np.arange(1050), **{f"x{j}": features[:, j] for j in range(3)}}
    advice = advise(target=labels, features=with_id)
    assert advice.stats["duplicates"]["skipped_id_columns"] == ["id"]
    assert "label_smoothing=0.095" in advice.spec


def test_multilabel_conflicts_use_bce_smoothing():
    features, _ = noisy_duplicates()
    matrix = (RNG.random((1000, 2)) < 0.5).astype(int)
    matrix = np.concatenate([matrix, 1 - matrix[:50]])
    advice = advise(target=matrix, features=features)
    assert data_term(advice) == f"bce(label_smoothing={2 * 50 / 1050:.2g})"
    assert_valid(advice.spec)


def test_multiclass_smoothing_spreads_the_rate_over_the_other_classes():
    features = RNG.normal(size=(1000, 2))
    labels = RNG.integers(0, 3, 1000)
    features = np.concatenate([features, features[:50]])
    labels = np.concatenate([labels, (labels[:50] + 1) % 3])
    advice = advise(target=labels, features=features)
    # e spread over 3 classes puts e * 2/3 off the label: e = rate * 3 / 2
    assert data_term(advice) == f"ce(label_smoothing={50 / 1050 * 3 / 2:.2g})"


# -- rule 5: groups ----------------------------------------------------------------------------------


def test_no_groups_no_constraint():
    assert "subject to" not in advise(target=np.array([0, 1] * 50)).spec


def test_a_group_gives_a_fairness_bound_with_each_groups_size():
    target = (RNG.random(1000) < 0.3).astype(int)
    sex = np.array(["f"] * 400 + ["m"] * 600)
    advice = advise(target={"y": target}, groups={"sex": sex})
    assert "subject to fairness(dp_gap, group=sex) <= 0.05 as fair_sex" in advice.spec  # no metric: dp_gap
    assert "sizes 'f': 400, 'm': 600" in advice.spec
    assert "0 = 'f', 1 = 'm'" in advice.spec and "sex: group[N] of 2" in advice.spec
    assert advice.stats["groups"]["sex"] == {"values": ["f", "m"], "sizes": [400, 600]}
    assert advice.warnings == []
    assert_valid(advice.spec)


@pytest.mark.parametrize("metric,stat", [("recall", "tpr_gap"), ("accuracy", "error_rate_gap"),
                                         ("f1", "eo_gap"), ("precision", "fpr_gap"), ("roc_auc", "dp_gap")])
def test_the_fairness_statistic_follows_the_metric(metric, stat):
    target = (RNG.random(1000) < 0.3).astype(int)
    advice = advise(target={"y": target}, groups={"g": RNG.integers(0, 2, 1000)}, metric=metric)
    reads_target = ", target=y" if stat != "dp_gap" else ""
    assert f"subject to fairness({stat}, group=g{reads_target}) <= 0.05" in advice.spec
    assert_valid(advice.spec)


def test_a_small_group_is_warned_about_with_its_standard_error():
    target = (RNG.random(1000) < 0.3).astype(int)
    codes = np.array([0] * 980 + [1] * 20)
    advice = advise(target=target, groups={"site": codes})
    (warning,) = advice.warnings
    assert warning.startswith("group site=1 has 20 rows (< 30)")
    assert f"0.5/sqrt(20) = {0.5 / math.sqrt(20):.2f}" in warning
    assert "# warning: group site=1 has 20 rows" in advice.spec


def test_regression_and_multiclass_bound_the_group_loss_ratio():
    y = RNG.normal(size=600)
    w = RNG.random(600) + 0.5
    advice = advise(target={"y": y}, groups={"site": RNG.integers(0, 3, 600)}, weight={"w": w})
    assert ("subject to fairness(group_loss_ratio(mse(target=y)), group=site, sample_weight=w) <= 0.2"
            in advice.spec)
    assert_valid(advice.spec)
    multiclass = advise(target=RNG.integers(0, 4, 2000), groups={"g": RNG.integers(0, 2, 2000)})
    assert "fairness(group_loss_ratio(ce()), group=g) <= 0.2" in multiclass.spec
    assert_valid(multiclass.spec)


# -- rule 6: segmentation masks ----------------------------------------------------------------------


def test_masks_with_little_foreground_give_dice_without_background_and_ce():
    masks = np.zeros((6, 16, 16), dtype=np.int64)
    masks[:, :3, :3] = 1  # 9 of 256 pixels: 3.5% foreground
    masks[:, 5, 5] = 2
    advice = advise(target=masks)
    assert advice.task == "segmentation"
    assert advice.stats["segmentation"]["foreground_fraction"] == pytest.approx(10 / 256)
    assert "let overlap = dice(include_background=false)" in advice.spec and "let data = ce()" in advice.spec
    assert "pred: logits[N, 3, H, W]" in advice.spec and "target: labels[N, H, W]" in advice.spec
    assert_valid(advice.spec)


def test_masks_with_much_foreground_keep_every_channel():
    masks = (RNG.random((4, 8, 8)) < 0.4).astype(np.int64)
    advice = advise(target=masks)
    assert "let overlap = dice()" in advice.spec
    assert "foreground" in reason(advice, "segmentation").why
    assert_valid(advice.spec)


def test_cli_reads_masks_from_npy(capsys, tmp_path):
    masks = np.zeros((3, 2, 5, 5), dtype=np.int64)  # volumes [N, D, H, W]
    masks[:, :, 0, 0] = 1
    np.save(tmp_path / "masks.npy", masks)
    status, out, _ = run(capsys, "advise", tmp_path / "masks.npy")
    assert status == 0
    assert "masks: labels[N, D, H, W]" in out and "pred: logits[N, 2, D, H, W]" in out
    assert_valid(out)


def test_masks_must_be_integer_labels():
    with pytest.raises(DataError, match="integer class labels"):
        advise(target=RNG.random((2, 4, 4)))


# -- rule 7: a metric the loss does not optimise -----------------------------------------------------


def test_f1_under_strong_imbalance_adds_soft_f1():
    target = np.array([0] * 950 + [1] * 50)  # ratio 19
    advice = advise(target=target, metric="f1")
    assert "let surrogate = soft_f1()" in advice.spec and "loss = data + surrogate" in advice.spec
    assert "ratio 19.0 >= 10" in reason(advice, "metric").why
    assert "soft_f1(beta=2)" in advise(target=target, metric="f2").spec
    assert_valid(advice.spec)


def test_f1_without_strong_imbalance_adds_nothing():
    advice = advise(target=np.array([0] * 600 + [1] * 400), metric="f1")
    assert "let surrogate" not in advice.spec and reason(advice, "metric").choice == "none"
    assert "soft_f1" not in advise(target=np.array([0] * 950 + [1] * 50), metric="accuracy").spec


def test_multilabel_f1_gets_the_macro_surrogate_and_multiclass_a_warning():
    matrix = np.zeros((1000, 2), dtype=int)
    matrix[:30, 0] = 1
    matrix[:500, 1] = 1
    advice = advise(target=matrix, metric="f1")
    assert "soft_f1()" in advice.spec and "macro over labels" in advice.spec
    assert_valid(advice.spec)
    multiclass = advise(target=np.repeat(np.arange(3), [900, 80, 20]), metric="f1")
    assert "let surrogate" not in multiclass.spec
    assert any("soft_f1 takes binary or multi-label logits" in w for w in multiclass.warnings)


# -- every spec advise writes is valid ----------------------------------------------------------------


def test_labels_that_are_already_codes_get_no_mapping_line():
    assert "feed" not in advise(target=np.array([0.0, 1.0, 1.0])).spec
    assert "feed" not in advise(target=np.array([True, False, True])).spec
    assert "feed target as class codes in sorted order: 0 = 1, 1 = 2" in advise(target=np.array([1, 2, 2])).spec


def test_masks_with_one_value_are_refused():
    with pytest.raises(DataError, match="every pixel of the masks is 0"):
        advise(target=np.zeros((2, 3, 3), dtype=np.int64))


targets = st.one_of(
    hnp.arrays(np.int64, st.integers(2, 300), elements=st.integers(0, 4)),
    hnp.arrays(np.float64, st.integers(2, 300), elements=st.floats(-1e6, 1e6, allow_nan=False)),
    hnp.arrays(np.int64, st.tuples(st.integers(2, 200), st.integers(2, 4)), elements=st.integers(0, 1)),
    hnp.arrays(np.int64, st.tuples(st.integers(1, 3), st.integers(2, 5), st.integers(2, 5)),
               elements=st.integers(0, 2)),
)
METRICS = [None, "f1", "recall", "accuracy", "mae", "rmse", "pinball@0.25", "dice"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=targets, metric=st.sampled_from(METRICS), grouped=st.booleans(), weighted=st.booleans(),
       seed=st.integers(0, 2**16))
def test_advise_writes_a_valid_spec_or_a_one_line_data_error(target, metric, grouped, weighted, seed):
    rng = np.random.default_rng(seed)
    rows = target.shape[0]
    try:
        advice = advise(target=target, metric=metric,
                        groups={"g": rng.integers(0, 3, rows)} if grouped else None,
                        weight=rng.random(rows) + 0.1 if weighted else None,
                        features=rng.integers(0, 3, (rows, 2)))
    except DataError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert_valid(advice.spec)
    json.dumps(advice.to_json(), allow_nan=False)  # plain JSON: no NaN, no numpy types


def test_every_renamed_column_is_said_and_several_targets_are_one_input():
    target = np.array([0, 1] * 20)
    spec = advise(target={"y": target}, groups={"a b": target}, weight={"1w": np.ones(40)}).spec
    assert "# input 'a_b' is the column 'a b' (renamed: not a valid name)" in spec
    assert "# input 'c_1w' is the column '1w' (renamed: not a valid name)" in spec
    assert "subject to fairness(dp_gap, group=a_b, sample_weight=c_1w)" in spec
    spec = advise(target={"a": target, "b b": 1 - target}).spec
    assert "for target columns 'a', 'b b'" in spec
    assert "# target holds the target columns in this order: a, b b" in spec and "target: multihot[N, 2]" in spec
    assert_valid(spec)


def test_one_row_at_an_extreme_is_no_cap():
    # 100 continuous values: the maximum and the minimum are each 1% of the rows, but one row each.
    advice = advise(target=RNG.normal(size=100))
    assert "soft_bound" not in advice.spec
    assert "# bounds: values from" in advice.spec and "-> nothing added" in advice.spec


def test_targets_outside_float32s_reach_are_refused():
    with pytest.raises(DataError, match="outside what float32 training handles; rescale the target first"):
        advise(target=RNG.normal(size=100) * 1e30)
    with pytest.raises(DataError, match="rescale"):
        advise(target=RNG.normal(size=100) * 1e-25)
    assert_valid(advise(target=RNG.normal(size=100) * 1e6).spec)


def test_lossdsl_advise_is_the_function_even_after_importing_the_module():
    import importlib

    importlib.import_module("lossdsl.advise")
    assert callable(lossdsl.advise) and lossdsl.advise is advise
    assert isinstance(lossdsl.advise(target=np.array([0, 1, 1])), lossdsl.Advice)
