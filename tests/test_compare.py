"""lossdsl.compare and ``lossdsl compare``: deterministic scores, a good loss beating an absurd one,
metrics equal to scikit-learn's and fairlearn's, and exit status 2 without a traceback for bad input."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl.cli import main
from lossdsl.compare import Comparison, DataError, _Predictions, make_splits, score

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def blobs(n=120, seed=0, features=3):
    """An easy binary problem: the class is the sign of the first feature, plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = (x[:, 0] + 0.1 * rng.normal(size=n) > 0).astype(np.int64)
    return x, y


def test_the_same_seed_gives_the_same_table():
    x, y = blobs()
    first = lossdsl.compare(["ce()", "focal()"], x, y, epochs=2, progress=False)
    second = lossdsl.compare(["ce()", "focal()"], x, y, epochs=2, progress=False)
    assert first.table() == second.table()
    assert first.scores == second.scores
    other = lossdsl.compare(["ce()", "focal()"], x, y, epochs=2, seed=1, progress=False)
    assert other.scores != first.scores  # other folds and weights


def test_a_good_loss_beats_an_absurd_one():
    """-ce() pushes the logits the wrong way: on a nearly separable problem with classes of about equal
    size, ce() reaches accuracy near 1 and -ce() falls below chance (0.5)."""
    x, y = blobs(n=150)
    result = lossdsl.compare(["ce()", "-1 * ce()"], x, y, epochs=20, lr=0.1, progress=False)
    assert result.task == "binary" and result.metric == "accuracy" and result.higher_is_better
    good, _ = result.summary("ce()")
    absurd, _ = result.summary("-1 * ce()")
    assert good > 0.9
    assert absurd < 0.5
    assert result.winner == "ce()"
    assert result.metrics[0] == "accuracy"


def test_regression_lower_is_better_and_the_winner_follows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 2))
    y = 3 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=90)
    # mse() + an absurd term: a quantile at q=0.01 that drags the prediction far below the data
    result = lossdsl.compare(["mse()", "quantile(q=0.01)"], x, y, task="regression", metric="mae", epochs=30, lr=0.1,
                             progress=False)
    assert result.metric == "mae" and not result.higher_is_better
    assert result.metrics == ["mae", "rmse"]
    assert result.summary("mse()")[0] < result.summary("quantile(q=0.01)")[0]
    assert result.winner == "mse()"


def test_spread_is_the_sample_standard_deviation_over_folds():
    comparison = Comparison(["a", "b"], "regression", "mae", ["mae"], {"a": {"mae": [1.0, 2.0, 6.0]},
                            "b": {"mae": [3.0, 3.0, 3.0]}}, {})
    assert comparison.summary("a") == (3.0, pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1)))
    assert comparison.winner == "a"  # mean 3.0 against 3.0: the first listed wins a tie
    comparison.scores["a"]["mae"] = [4.0, 4.0, 4.0]
    assert comparison.winner == "b"
    comparison.scores["b"]["mae"] = [float("nan"), 1.0, 1.0]  # a diverged fold: never the winner
    assert comparison.winner == "a"


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 4), st.integers(5, 60))
def test_classification_metrics_equal_sklearn(seed, classes, n):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    y[:classes] = np.arange(classes)  # every class present
    logits = rng.normal(size=n) if classes == 2 else rng.normal(size=(n, classes))
    predicted = (logits > 0).astype(int) if classes == 2 else logits.argmax(1)
    task = "binary" if classes == 2 else "multiclass"
    values = score(task, "accuracy", np.arange(classes), y, _Predictions(logits), {})
    assert values["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, predicted))
    assert values["balanced_accuracy"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(y, predicted))
    assert values["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(y, predicted, average="macro", zero_division=0))
    recalls = sklearn_metrics.recall_score(y, predicted, average=None, labels=list(range(classes)), zero_division=0)
    for c in range(classes):
        assert values[f"recall[{c}]"] == pytest.approx(recalls[c])
    if task == "binary":
        assert values["f1"] == pytest.approx(sklearn_metrics.f1_score(y, predicted, zero_division=0))
        assert values["recall"] == pytest.approx(sklearn_metrics.recall_score(y, predicted, zero_division=0))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.1, 0.5, 0.9]))
def test_regression_metrics_equal_sklearn(seed, q):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=40) * 10
    out = y + rng.standard_t(2, size=40)
    values = score("regression", f"pinball@{q:g}", None, y, _Predictions(out), {})
    assert values["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(y, out))
    assert values["rmse"] == pytest.approx(np.sqrt(sklearn_metrics.mean_squared_error(y, out)))
    assert values[f"pinball@{q:g}"] == pytest.approx(sklearn_metrics.mean_pinball_loss(y, out, alpha=q))
    assert list(values)[0] == f"pinball@{q:g}"  # the named metric first


def test_a_multi_quantile_prediction_is_scored_by_the_column_of_its_level():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    out = np.stack([y - 1, y, y + 5], axis=1)  # q = 0.1, 0.5, 0.9
    values = score("regression", "pinball@0.9", None, y, _Predictions(out, [0.1, 0.5, 0.9]), {})
    assert values["mae"] == 0.0  # the median column
    assert values["pinball@0.9"] == pytest.approx(sklearn_metrics.mean_pinball_loss(y, y + 5, alpha=0.9))


def test_fairness_gaps_are_fairlearns_per_group():
    fairlearn = pytest.importorskip("fairlearn.metrics")
    rng = np.random.default_rng(3)
    y, sex = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    logits = rng.normal(size=200) + sex  # group 1 predicted positive more often
    values = score("binary", "dp_gap[sex]", np.arange(2), y, _Predictions(logits), {"sex": sex})
    hard = (logits > 0).astype(int)
    rates = [hard[sex == g].mean() for g in (0, 1)]
    assert values["dp_gap[sex]"] == pytest.approx(abs(rates[0] - rates[1]))
    assert values["eo_gap[sex]"] == pytest.approx(fairlearn.equalized_odds_difference(y, hard, sensitive_features=sex))
    assert list(values)[0] == "dp_gap[sex]"


def test_folds_are_stratified_and_partition_the_rows():
    y = np.array([0] * 30 + [1] * 9 + [2] * 4)
    splits = make_splits(y, len(y), 3, None, seed=0)
    held = np.concatenate([test for _, test in splits])
    assert sorted(held) == list(range(len(y)))
    for train, test in splits:
        assert set(train).isdisjoint(test) and len(train) + len(test) == len(y)
        counts = np.bincount(y[test], minlength=3)
        assert all(abs(c - total / 3) < 1 for c, total in zip(counts, (30, 9, 4)))
    (train, test), = make_splits(y, len(y), 3, 0.25, seed=0)
    assert len(test) == round(0.25 * 30) + round(0.25 * 9) + round(0.25 * 4)


def test_groups_bind_to_the_spec_and_gaps_are_reported():
    pytest.importorskip("fairlearn")
    x, y = blobs(n=80)
    sex = np.random.default_rng(1).integers(0, 2, 80)
    result = lossdsl.compare(["ce()", "ce() + 0.5*fairness(fpr_gap, group=sex)"], x, y, groups={"sex": sex},
                             metric="eo_gap", epochs=2, progress=False)
    assert result.metric == "eo_gap[sex]" and not result.higher_is_better
    assert "dp_gap[sex]" in result.metrics
    document = json.loads(result.to_json())
    assert document["winner"] == result.winner
    assert document["specs"][0]["metrics"]["eo_gap[sex]"]["folds"] == result.scores["ce()"]["eo_gap[sex]"]


def test_a_spec_reading_a_missing_input_is_a_data_error():
    x, y = blobs(n=30)
    with pytest.raises(DataError, match="'sex'"):
        lossdsl.compare(["ce() + fairness(dp_gap, group=sex)"], x, y, epochs=1, progress=False)


def test_import_lossdsl_does_not_load_compare():
    code = "import sys, lossdsl; print('lossdsl.compare' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# ------------------------------------------------------------------------------------------ the CLI


def write_csv(path, rows, header="a,b,sex,y"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, row)) for row in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data_csv(tmp_path):
    x, y = blobs(n=60)
    sex = np.random.default_rng(2).integers(0, 2, 60)
    colour = np.where(x[:, 2] > 0, "red", "blue")
    return write_csv(tmp_path / "data.csv", [(f"{a:.4f}", f"{b:.4f}", s, c, t) for (a, b, _), s, c, t
                                             in zip(x, sex, colour, y)], header="a,b,sex,colour,y")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_table_with_the_named_metric_first_and_the_winner(data_csv, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "compare.png"
    code, out, err = run_cli(capsys, "compare", "ce()", "focal()", "--data", str(data_csv), "--target", "y",
                             "--metric", "f1", "--epochs", "2", "--quiet", "--plot", str(plot), "--group", "sex")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("binary, 60 rows, 4 features")  # a, b and colour one-hot: sex is a group
    assert lines[1].split()[:3] == ["metric", "ce()", "focal()"]
    assert lines[2].startswith("* f1")
    assert any(line.startswith("eo_gap[sex]") for line in lines)
    assert lines[-1].startswith("winner by f1 (higher is better): ")
    assert plot.stat().st_size > 1000


def test_cli_json_and_a_model_factory_of_the_users(data_csv, capsys, tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        CALLS = []
        def tiny(n_features, n_outputs):
            CALLS.append((n_features, n_outputs))
            return torch.nn.Linear(n_features, n_outputs)
    """), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_cli(capsys, "compare", "ce()", "--data", str(data_csv), "--target", "y", "--folds", "2",
                             "--model", "python:my_models:tiny", "--epochs", "1", "--format", "json", "--quiet")
    assert code == 0, err
    document = json.loads(out)
    assert document["setup"]["model"] == "tiny" and document["setup"]["folds"] == 2
    import my_models

    assert my_models.CALLS == [(5, 1), (5, 1)]  # a, b, sex, colour one-hot; one logit; once per fold


@pytest.mark.parametrize(
    "make, argv, message",
    [
        (lambda p: write_csv(p, [(1, 2, 0, 1)] * 5), ["--target", "z"], "no target column 'z'"),
        (lambda p: (p.write_text("", encoding="utf-8"), p)[1], ["--target", "y"], "empty"),
        (lambda p: write_csv(p, [(1, i, 0, 1) for i in range(9)]), ["--target", "y"], "one value (1)"),
        (lambda p: write_csv(p, [(1, i, 0, "cat" if i % 2 else "dog") for i in range(9)]), ["--target", "y", "--task", "regression"],
         "not numeric"),
        (lambda p: write_csv(p, [(i, i, i % 2, i % 2) for i in range(9)]), ["--target", "y", "--metric", "mae"],
         "metric 'mae' does not fit a binary task"),
        (lambda p: write_csv(p, [(i, i, i % 2, i % 2) for i in range(9)]), ["--target", "y", "--model", "python:nope:f"],
         "cannot import module 'nope'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, make, argv, message):
    path = make(tmp_path / "bad.csv")
    code, out, err = run_cli(capsys, "compare", "ce()", "--data", str(path), *argv, "--quiet")
    assert code == 2
    assert message in err
    assert err.startswith("lossdsl compare: ") and err.count("\n") == 1
    assert "Traceback" not in err and out == ""


def test_cli_a_bad_spec_exits_2_with_its_diagnostic(data_csv, capsys):
    code, out, err = run_cli(capsys, "compare", "ce()", "cee()", "--data", str(data_csv), "--target", "y", "--quiet")
    assert code == 2
    assert "error[E202]: unknown term 'cee'" in err
    assert "Traceback" not in err


def test_cli_a_spec_reading_a_column_not_given_exits_2(data_csv, capsys):
    code, out, err = run_cli(capsys, "compare", "ce() + fairness(dp_gap, group=race)", "--data", str(data_csv),
                             "--target", "y", "--quiet")
    assert code == 2
    assert "'race'" in err and err.count("\n") == 1


def test_cli_end_to_end_in_a_subprocess_has_no_traceback(tmp_path):
    path = write_csv(tmp_path / "one.csv", [(1, 2, 0, 1)] * 4)
    result = subprocess.run([sys.executable, "-m", "lossdsl", "compare", "ce()", "--data", str(path), "--target", "y"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "lossdsl compare: target: one value (1) in all 4 rows: nothing to learn"


# ------------------------------------------------------------------------------------ the worked examples

EXAMPLE = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples" / "choosing.py"


def test_worked_examples_run_in_quick_mode_and_print_their_tables():
    env = dict(__import__("os").environ, LOSSDSL_EXAMPLE_QUICK="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(EXAMPLE), "--only", "digits", "diabetes", "multilabel"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "== digits: Digits (ten balanced classes)" in result.stdout
    assert "winner by accuracy (higher is better): " in result.stdout
    assert "== multilabel: Synthetic multi-label" in result.stdout
    assert "winner by f1 (higher is better): " in result.stdout and "\nhamming_loss " in result.stdout
    assert "winner by mae (lower is better): " in result.stdout


@pytest.fixture
def choosing():
    """examples/choosing.py as a module (its helpers, without running it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("choosing", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_multilabel_example_compares_advise_with_plain_bce(choosing):
    """Its data has the label frequencies its text quotes, and its markdown measures advise against bce()."""
    example = next(e for e in choosing.EXAMPLES if e.name == "multilabel")
    counts = choosing.multilabel()["target"].sum(axis=0)
    assert counts.tolist() == [1054, 1264, 79, 863, 579]
    assert "1,054, 1,264, 79, 863 and 579 rows" in example.about
    assert f"{(2000 - counts.min()) / counts.min():.1f}" in example.about  # the largest ratio, 24.3
    comparison = Comparison(["bce()", "advise"], "multilabel", "f1", ["f1"],
                            {"bce()": {"f1": [0.5]}, "advise": {"f1": [0.6]}},
                            {"rows": 9, "features": 2, "folds": 3, "holdout": None, "model": "linear", "epochs": 1,
                             "seed": 0, "labels": ["0", "1"]})
    text = choosing.markdown(example, {"result": comparison, "seconds": 1.0, "advice": "loss = bce()\n"})
    assert "advise against plain `bce()` on f1: 0.600 against 0.500, at least as good." in text


def test_worked_examples_refuse_to_write_quick_numbers_into_the_docs(choosing, monkeypatch, capsys):
    monkeypatch.setattr(choosing, "QUICK", True)
    monkeypatch.setattr(sys, "argv", ["choosing.py", "--write-docs"])
    with pytest.raises(SystemExit) as exit_info:
        choosing.main()
    assert exit_info.value.code == 2
    assert "not with LOSSDSL_EXAMPLE_QUICK=1" in capsys.readouterr().err


def test_worked_examples_write_only_between_their_markers(choosing, tmp_path):
    doc = tmp_path / "choosing.md"
    doc.write_text(f"# Choosing a loss\n\n## Worked examples\n\n{choosing.BEGIN}\nold\n{choosing.END}\n\nafter\n")
    choosing.write_docs(["### one\n", "### two\n"], doc)
    assert doc.read_text() == (f"# Choosing a loss\n\n## Worked examples\n\n{choosing.BEGIN}\n\n### one\n\n### two\n\n"
                               f"{choosing.END}\n\nafter\n")
    choosing.write_docs(["### three\n"], doc)  # again: the block replaced, not doubled
    assert doc.read_text().count(choosing.BEGIN) == 1 and "### one" not in doc.read_text()


def test_a_holdout_is_one_split_with_no_spread_and_a_class_recall_can_decide():
    x, y = blobs(n=80)
    result = lossdsl.compare(["ce()", "focal()"], x, y, holdout=0.25, metric="recall[1]", epochs=2, progress=False)
    assert result.setup["folds"] == 1 and result.metric == "recall[1]"
    assert all(len(values) == 1 for values in result.scores["ce()"].values())
    assert result.summary("ce()")[1] == 0.0
    assert result.metrics[0] == "recall[1]" and result.metrics.count("recall[1]") == 1


def test_cli_reads_a_spec_file_and_binds_its_group_column(data_csv, capsys, tmp_path):
    spec = tmp_path / "fair.loss"
    spec.write_text("loss = ce() + 0.5*fairness(fpr_gap, group=sex)\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "compare", "ce()", str(spec), "--data", str(data_csv), "--target", "y",
                             "--group", "sex", "--metric", "eo_gap", "--epochs", "1", "--quiet")
    assert code == 0, err
    assert out.splitlines()[1].split()[1] == "ce()" and str(spec) in out
    assert "winner by eo_gap[sex] (lower is better)" in out


def test_lossdsl_compare_is_callable_and_names_its_types_however_it_was_imported():
    code = textwrap.dedent("""
        import lossdsl, sys
        first = lossdsl.compare
        import lossdsl.compare as module
        for form in (first, lossdsl.compare, module):
            assert callable(form) and form.DataError is module.DataError and form.Comparison is module.Comparison
        try:
            module([], [[1.0]], [1])
        except lossdsl.compare.DataError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no specs to compare"


def test_feature_columns_numbers_as_they_are_text_one_hot_and_matrices_by_column():
    from lossdsl.compare import encode_features

    columns = {"age": np.array([30, 40, 50]), "colour": np.array(["red", "blue", "red"]),
               "x": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}
    np.testing.assert_array_equal(encode_features(columns), [[30, 0, 1, 1, 2], [40, 1, 0, 3, 4], [50, 0, 1, 5, 6]])
    with pytest.raises(DataError, match="feature column 'img'"):
        encode_features({"img": np.zeros((3, 2, 2))})


def test_cli_a_spec_reading_the_target_by_its_column_name_trains_as_on_target(data_csv, capsys, tmp_path):
    """advise names the target input after its column (`ce(target=y)`); compare passes the target
    under that name too, and the spec trains exactly as `ce()` on `target` does."""
    advised = tmp_path / "advised.loss"
    code, _, err = run_cli(capsys, "advise", str(data_csv), "--target", "y", "-o", str(advised))
    assert code == 0, err
    by_name = "inputs:\n    pred: logits[N]\n    y: binary[N]\nloss = ce(target=y)\n"
    code, out, err = run_cli(capsys, "compare", "ce()", by_name, str(advised), "--data", str(data_csv),
                             "--target", "y", "--epochs", "1", "--quiet", "--format", "json")
    assert code == 0, err
    scores = [spec["metrics"] for spec in json.loads(out)["specs"]]
    assert scores[0] == scores[1]
    assert set(scores[2]) == set(scores[0])


def test_a_target_column_named_target_is_passed_once():
    x, y = blobs(n=60)
    columns = {"a": x[:, 0], "b": x[:, 1], "target": y}
    by_name = lossdsl.compare(["ce()"], columns, "target", folds=2, epochs=1, progress=False)
    renamed = lossdsl.compare(["ce()"], {"a": x[:, 0], "b": x[:, 1], "y": y}, "y", folds=2, epochs=1, progress=False)
    assert by_name.to_json() == renamed.to_json()


def test_columns_are_also_passed_under_the_names_advise_gives_them():
    """advise renames income-level to income_level and sex-code to sex_code in the specs it writes."""
    x, y = blobs(n=60)
    sex = np.random.default_rng(4).integers(0, 2, 60)
    columns = {"a": x[:, 0], "b": x[:, 1], "sex-code": sex, "income-level": y}
    spec = ("inputs:\n    pred: logits[N]\n    income_level: binary[N]\n    sex_code: group[N] of 2\n"
            "loss = ce(target=income_level) + 0.1 * fairness(dp_gap, group=sex_code, target=income_level)\n")
    plain = "loss = ce() + 0.1 * fairness(dp_gap, group=g)\n"
    ours = json.loads(lossdsl.compare([spec], columns, "income-level", groups=["sex-code"], folds=2, epochs=1,
                                      progress=False).to_json())
    theirs = json.loads(lossdsl.compare([plain], {"a": x[:, 0], "b": x[:, 1], "income-level": y},
                                        "income-level", groups={"g": sex}, folds=2, epochs=1,
                                        progress=False).to_json())
    assert ours["specs"][0]["metrics"]["accuracy"] == theirs["specs"][0]["metrics"]["accuracy"]


def test_the_losss_own_parameters_are_trained_too(monkeypatch):
    """uncertainty(...)'s learned weights are in compare's optimiser: no 'not in the optimiser' warning."""
    import warnings

    x, y = blobs(n=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lossdsl.LossSpecWarning)
        result = lossdsl.compare(["uncertainty(ce(), 0.5 * ce(label_smoothing=0.1))"], x, y, folds=2, epochs=20,
                                 progress=False)
    assert result.to_json()


# ------------------------------------------------------------------------------------------ multi-label


def multilabel_data(n=240, seed=0, labels=4):
    """sklearn's make_multilabel_classification, seeded: labels of unequal frequencies."""
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=n, n_features=6, n_classes=labels, n_labels=1,
                                          random_state=seed)
    return x.astype(np.float64), y.astype(np.int64)


def sklearn_multilabel(y, hard, labels):
    """The expected multi-label metrics, from scikit-learn directly (zero_division=0, as compare documents)."""
    f1 = sklearn_metrics.f1_score
    expected = {"f1": f1(y, hard, average="macro", zero_division=0),
                "micro_f1": f1(y, hard, average="micro", zero_division=0),
                "samples_f1": f1(y, hard, average="samples", zero_division=0),
                "subset_accuracy": sklearn_metrics.accuracy_score(y, hard),
                "hamming_loss": sklearn_metrics.hamming_loss(y, hard)}
    for label, value in zip(labels, f1(y, hard, average=None, zero_division=0)):
        expected[f"f1[{label}]"] = value
    for label, value in zip(labels, sklearn_metrics.recall_score(y, hard, average=None, zero_division=0)):
        expected[f"recall[{label}]"] = value
    return expected


def test_multilabel_metrics_by_hand():
    """Two labels, three rows; predictions at sigmoid(logit) > 0.5. Label a: 1 hit, 1 miss, no false
    alarm (precision 1, recall 1/2, F1 2/3); label b: 1 hit, 1 miss, 1 false alarm (1/2, 1/2, 1/2).
    Micro: 2 hits, 1 false alarm, 2 misses: F1 = 2*2 / (2*2 + 1 + 2) = 4/7. Rows (true -> predicted):
    {a} -> {a} F1 1; {a, b} -> {b} F1 2/3; {b} -> {} F1 0; {} -> {b} F1 0 (zero_division=0)."""
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    logits = np.array([[2.0, -1.0], [-0.5, 3.0], [-2.0, -0.1], [-1.0, 0.2]])
    values = score("multilabel", "f1", np.array(["a", "b"]), y, _Predictions(logits), {})
    assert values["f1[a]"] == pytest.approx(2 / 3) and values["recall[a]"] == pytest.approx(1 / 2)
    assert values["f1[b]"] == pytest.approx(1 / 2) and values["recall[b]"] == pytest.approx(1 / 2)
    assert values["f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert values["micro_f1"] == pytest.approx(4 / 7)
    assert values["samples_f1"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4)
    assert values["subset_accuracy"] == pytest.approx(1 / 4)  # only the first row is right in every label
    assert values["hamming_loss"] == pytest.approx(3 / 8)  # 3 wrong cells of 8
    assert list(values)[0] == "f1"


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.integers(3, 50))
def test_multilabel_metrics_equal_sklearn_at_sigmoid_one_half(seed, labels, n):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, labels))
    logits = rng.normal(size=(n, labels)) * 3
    names = np.array([f"l{j}" for j in range(labels)])
    hard = (1 / (1 + np.exp(-logits)) > 0.5).astype(int)
    values = score("multilabel", "hamming_loss", names, y, _Predictions(logits), {})
    expected = sklearn_multilabel(y, hard, names)
    assert set(values) == set(expected) and list(values)[0] == "hamming_loss"
    for name, value in expected.items():
        assert values[name] == pytest.approx(value), name


def test_advised_multilabel_spec_is_scored_with_sklearns_metrics_on_its_predictions(monkeypatch):
    """advise's bce(pos_weight=...) against bce(): C logits per row, the [N, C] float 0/1 target, and
    every fold's metrics equal to scikit-learn's on that fold's predictions."""
    import lossdsl.compare as compare_module

    x, y = multilabel_data()
    advice = lossdsl.advise(target=y)
    assert advice.task == "multilabel" and "bce(pos_weight=[" in advice.spec
    seen = []
    original = compare_module.score

    def recording(task, metric, classes, y_true, predicted, groups):
        seen.append((y_true.copy(), predicted.values.copy()))
        return original(task, metric, classes, y_true, predicted, groups)

    monkeypatch.setattr(compare_module, "score", recording)
    result = lossdsl.compare([advice.spec, "bce()"], x, y, names=["advise", "bce()"], folds=2, epochs=3,
                             progress=False)
    assert result.task == "multilabel" and result.metric == "f1" and result.higher_is_better
    assert result.setup["labels"] == ["0", "1", "2", "3"] and result.setup["classes"] is None
    assert result.metrics[:5] == ["f1", "micro_f1", "samples_f1", "subset_accuracy", "hamming_loss"]
    assert len(seen) == 4  # two specs, two folds: fold 0 (advise, bce), fold 1 (advise, bce)
    for call, (y_true, logits) in enumerate(seen):
        assert logits.shape == (len(y_true), 4) and y_true.dtype == np.float32
        expected = sklearn_multilabel(y_true.astype(int), (logits > 0).astype(int), result.setup["labels"])
        label, fold = ["advise", "bce()"][call % 2], call // 2
        for name, value in expected.items():
            assert result.scores[label][name][fold] == pytest.approx(value), name
    # the folds are not stratified: the rows shuffled once and dealt in turn, as for regression
    held = [test for _, test in make_splits(None, len(y), 2, None, seed=0)]
    assert [len(rows) for rows in held] == [len(seen[0][0]), len(seen[2][0])]
    assert "stratified" not in result.describe() and "4 labels" in result.describe()


def test_multilabel_from_named_columns_equals_the_array_form():
    x, y = multilabel_data(n=120)
    columns = {**{f"x{j}": x[:, j] for j in range(x.shape[1])}, **{f"tag{j}": y[:, j] for j in range(4)}}
    named = lossdsl.compare(["bce()"], columns, [f"tag{j}" for j in range(4)], folds=2, epochs=2, progress=False,
                            metric="recall[TAG2]")
    plain = lossdsl.compare(["bce()"], x, y, folds=2, epochs=2, progress=False, metric="recall[2]")
    assert named.metric == "recall[tag2]" and named.setup["labels"] == ["tag0", "tag1", "tag2", "tag3"]
    assert named.setup["features"] == 6  # the target columns are no features
    assert named.scores["bce()"]["recall[tag2]"] == plain.scores["bce()"]["recall[2]"]
    assert named.scores["bce()"]["f1"] == plain.scores["bce()"]["f1"]


def test_multilabel_bad_input_is_a_data_error():
    x, y = multilabel_data(n=60)
    bad = y.copy()
    bad[5, 2] = 2
    with pytest.raises(DataError, match="column 2 of the target holds 2, not 0/1"):
        lossdsl.compare(["bce()"], x, bad, epochs=1, progress=False)
    with pytest.raises(DataError, match=r"metric 'accuracy' does not fit a multilabel task; known: f1, micro_f1"):
        lossdsl.compare(["bce()"], x, y, metric="accuracy", epochs=1, progress=False)
    with pytest.raises(DataError, match="no label '7'"):
        lossdsl.compare(["bce()"], x, y, metric="f1[7]", epochs=1, progress=False)
    with pytest.raises(DataError, match="several 0/1 columns are a multilabel task"):
        lossdsl.compare(["bce()"], x, y, task="binary", epochs=1, progress=False)
    with pytest.raises(DataError, match="multilabel needs several 0/1 columns"):
        lossdsl.compare(["bce()"], x, y[:, 0], task="multilabel", epochs=1, progress=False)


@pytest.fixture
def multilabel_csv(tmp_path):
    x, y = multilabel_data(n=150)
    header = ",".join([f"f{j}" for j in range(6)] + ["sex", "tag-a", "tag_b", "tag_c", "tag_d"])
    sex = np.random.default_rng(5).integers(0, 2, len(y))
    rows = [[f"{v:.0f}" for v in features] + [s, *labels] for features, s, labels in zip(x, sex, y)]
    return write_csv(tmp_path / "tags.csv", rows, header=header)


def test_cli_advise_then_compare_on_the_same_multilabel_csv(multilabel_csv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short path: the table labels a column by it
    advised = Path("advised.loss")
    targets = ["--target", "tag-a", "--target", "tag_b", "--target", "tag_c,tag_d"]
    code, _, err = run_cli(capsys, "advise", str(multilabel_csv), *targets, "--features", "f0,f1,f2,f3,f4,f5",
                           "--group", "sex", "-o", str(advised))
    assert code == 0, err
    assert "multihot[N, 4]" in advised.read_text() and "group=sex) <= 0.2" in advised.read_text()
    code, out, err = run_cli(capsys, "compare", str(advised), "bce()", "--data", str(multilabel_csv), *targets,
                             "--epochs", "2", "--quiet", "--group", "sex")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("multilabel, 150 rows, 6 features, 4 labels; 3-fold cross-validation; ")
    assert lines[1].split()[:3] == ["metric", str(advised), "bce()"]
    assert lines[2].startswith("* f1 ")
    rows = [line.split()[0] for line in lines[3:-2]]  # the metric rows, then the winner and the note
    assert rows[:4] == ["micro_f1", "samples_f1", "subset_accuracy", "hamming_loss"]
    assert rows[4:] == [f"{kind}[{label}]" for kind in ("f1", "recall") for label in ("tag-a", "tag_b", "tag_c", "tag_d")]
    assert lines[-2].startswith("winner by f1 (higher is better): ")
    assert lines[-1].startswith("note: fairness gaps are computed for binary targets only")
    assert "dp_gap" not in out


def test_cli_multilabel_hamming_loss_is_lower_is_better_and_seeded(multilabel_csv, capsys):
    argv = ["compare", "bce()", "bce(pos_weight=[2, 2, 2, 2])", "--data", str(multilabel_csv), "--target",
            "tag-a,tag_b,tag_c,tag_d", "--metric", "hamming_loss", "--epochs", "2", "--folds", "2", "--quiet",
            "--format", "json"]
    first, second, other = (run_cli(capsys, *argv, "--seed", seed) for seed in ("3", "3", "4"))
    assert first[0] == second[0] == other[0] == 0, first[2]
    document = json.loads(first[1])
    assert document["metric"] == "hamming_loss" and document["higher_is_better"] is False
    assert first[1] == second[1]
    assert json.loads(other[1])["specs"] != document["specs"]  # other folds and initial weights
    means = {spec["spec"]: spec["metrics"]["hamming_loss"]["mean"] for spec in document["specs"]}
    assert document["winner"] == min(means, key=means.get)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--target", "tag-a,tag_b,count"], "target column 'count' holds 2, not 0/1"),
        (["--target", "tag-a,tag_b", "--metric", "accuracy"],
         "metric 'accuracy' does not fit a multilabel task; known: f1, micro_f1, samples_f1, subset_accuracy, "
         "hamming_loss, f1[LABEL], recall[LABEL]"),
        (["--target", "tag-a,tag_b", "--metric", "dp_gap", "--group", "sex"], "binary targets only"),
        (["--target", "tag-a", "--target", "tag-a"], "target column 'tag-a' is named twice"),
        (["--target", "tag-a,nope"], "no target column 'nope'"),
        (["--target", "tag-a,tag_b", "--task", "regression"], "several 0/1 columns are a multilabel task"),
    ],
)
def test_cli_multilabel_bad_input_exits_2_with_one_line(multilabel_csv, capsys, argv, message):
    header, *rows = multilabel_csv.read_text(encoding="utf-8").splitlines()
    # a column of counts 0, 1, 2, 0, ... (the first value that is not 0/1: 2, in the third row)
    multilabel_csv.write_text("\n".join([header + ",count", *(f"{row},{i % 3}" for i, row in enumerate(rows))]) + "\n",
                              encoding="utf-8")
    code, out, err = run_cli(capsys, "compare", "bce()", "--data", str(multilabel_csv), *argv, "--quiet")
    assert code == 2
    assert message in err
    assert err.startswith("lossdsl compare: ") and err.count("\n") == 1
    assert "Traceback" not in err and out == ""
