"""The example scripts run, in quick mode, and print their tables.

Every script is started once, all of them at the same time, as a subprocess with
``LOSSDSL_EXAMPLE_QUICK=1`` (every example shrinks its data and epochs). The tests then read each
one's exit status and output.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 120

# script -> lines (or parts of lines) it must print
EXPECTED = {
    "quickstart.py": [
        "inputs: pred, target, sex, y",
        re.compile(r"^\s*epoch\s+ce\s+fairness\s+soft_bound\s+total$", re.M),
        # quick mode: 5 epochs, not 20; the last one's row is printed
        re.compile(r"\n\s*5(\s+\d+\.\d{4}){4}\n\naccuracy", re.M),
        "accuracy",
    ],
    "imbalanced_classification.py": [
        "held-out recall per class",
        re.compile(r"^\s*class\s+freq\s+n\s+ce\(\)\s+ce\(weight=balanced\)\s+focal\(gamma=2\.0\)$", re.M),
        *(re.compile(rf"^\s*{c}\s+{f}%\s+\d+(\s+[01]\.\d{{3}}){{3}}$", re.M) for c, f in enumerate((60, 20, 10, 7, 3))),
        re.compile(r"^\s*balanced accuracy(\s+[01]\.\d{3}){3}$", re.M),
    ],
    "vae.py": [
        "let recon_loss = mse(pred=recon, target=x)",
        "inputs: recon, x, mu, logvar",
        re.compile(r"^\s*epoch\s+recon_loss\s+kl\s+total$", re.M),
        re.compile(r"^\s*1\s+\d+\.\d{5}\s+\d+\.\d{3}\s+\d+\.\d{5}$", re.M),
        "held-out reconstruction MSE",
        "KL per latent dimension (nats):",
    ],
    "segmentation.py": [
        "held-out Dice / IoU per class",
        re.compile(r"^\s*class\s+pixels\s+ce\(\) Dice\s+IoU\s+dice\(\) \+ ce\(\) Dice\s+IoU$", re.M),
        *(re.compile(rf"^\s*{name}\s+\d+\.\d%(\s+[01]\.\d{{3}}){{4}}$", re.M) for name in ("background", "disc", "square")),
    ],
    "robust_regression.py": [
        "10% gross outliers",
        re.compile(r"^\s+true\s+mse\(\)\s+huber\(delta=1\.0\)\s+mae\(\)$", re.M),
        *(re.compile(rf"^\s*{name}\s+-?\d+\.\d{{3}}(\s+-?\d+\.\d{{3}}){{3}}$", re.M) for name in ("w1", "w2", "w3", "bias")),
        re.compile(r"^\s*test RMSE\s+0\.300(\s+\d+\.\d{3}){3}$", re.M),
    ],
    "adult_fairness.py": [
        "UCI Adult:",
        "test split, fairlearn on hard predictions",
        re.compile(r"^config\s+seed\s+acc\s+FPR f\s+FPR m\s+FPR gap\s+TPR f\s+TPR m\s+TPR gap\s+EO gap$", re.M),
        re.compile(r"^ce\(\)\s+median(\s+[01]\.\d{4}){8}$", re.M),
        re.compile(r"^subject to .*median(\s+[01]\.\d{4}){8}\s+\(b\) (met|missed)", re.M),
        re.compile(r"shows an EO gap <= 0\.02 on \d+% of test samples this size\.$", re.M),
        re.compile(r"^lossdsl\.audit of .subject to \(defaults\)., seed 0, on the training split(.|\n)*^  eo\s+[01]\.\d+ <= 0\.02: ", re.M),
        re.compile(r"^4-fold cross-validation on the training split: out-of-fold predictions, audited over all \d+ rows$", re.M),
        re.compile(r"^subject to \(window, hard\)\s+median(\s+[01]\.\d{4}){8}\s+\(b\) (met|missed)(.|\n)*"
                   r"cross-validation(.|\n)*^subject to \(window, hard\)\s+median(\s+[01]\.\d{4}){8}\s+\(b\)", re.M),
        "plot: ",
    ],
    "fair_constraints.py": [
        "Each run: loss = ce() / subject to fairness(STAT, group=g) <= B, the defaults, last iterate.",
        re.compile(r"^lossdsl\.audit of \('adult', 'fpr_gap', 0\.05\) seed 0, training split, over \d+ rows$", re.M),
        re.compile(r"^  bound\s+[01]\.\d+ <= 0\.05: (holds|VIOLATED by [0-9.e-]+)$", re.M),
        *(re.compile(rf"^{name}\s+{stat}\s+0\.05\s+\|\s+[01]\.\d{{4}} [01]\.\d{{4}} \|\s+[01]\.\d{{4}}\s+[01]\.\d{{4}} \|"
                     r"\s+\d/\d\s+\| (MET|gap missed|accuracy missed)$", re.M)
          for name in ("adult", "arrests") for stat in ("eo_gap", "fpr_gap")),
        re.compile(r"^\d+ of 4 met; runs with a NaN multiplier: 0; largest multiplier in any run: \d+\.\d{3}$", re.M),
        "plot: ",
    ],
    "constraint_defaults.py": [
        re.compile(r"^large\s+eo_gap\s+0\.02 default\s+\|\s+[01]\.\d{4}\s+[01]\.\d{4} (met|missed)\s+\|\s+[01]\.\d{4}\s+\d+\.\d{2} \|", re.M),
        re.compile(r"^large\s+eo_gap\s+0\.05 no window limit\s+\|", re.M),
        re.compile(r"^large\s+eo_gap\s+- ce alone\s+\|\s+[01]\.\d{4}\s+[01]\.\d{4} -\s+\|\s+[01]\.\d{4}\s+0\.00 \|", re.M),
        re.compile(r"^large\s+eo_gap\s+0\.02 ExpGrad \(LR\)\s+\|\s+[01]\.\d{4}\s+[01]\.\d{4} (met|missed)\s+\|\s+[01]\.\d{4}$", re.M),
        re.compile(r"^default: \d+ of 2 met, accuracy at least ExpGrad's in \d; "
                   r"no window limit: \d+ of 2 met, accuracy at least ExpGrad's in \d$", re.M),
    ],
}
# Examples that need more than torch and lossdsl: what they may import (pyproject's `examples` extra).
EXTRA_IMPORTS = {
    "adult_fairness.py": {"numpy", "pandas", "fairlearn", "matplotlib", "tqdm"},
    "fair_constraints.py": {"numpy", "pandas", "fairlearn", "matplotlib", "sklearn", "adult_fairness"},
    "constraint_defaults.py": {"fairlearn", "sklearn"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """Run every example at once (they are small, and mostly wait on imports); collect their output."""
    env = dict(os.environ, LOSSDSL_EXAMPLE_QUICK="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    plots = tmp_path_factory.mktemp("plots")
    arguments = {  # plots not into the checkout
        "adult_fairness.py": ["--out", str(plots / "adult_fairness.png"), "--cv"],
        "fair_constraints.py": ["--out", str(plots / "fair_constraints.png")],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), *arguments.get(name, [])],
            cwd=EXAMPLES.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in EXPECTED
    }
    results = {}
    try:
        for name, process in processes.items():
            try:
                stdout, stderr = process.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
                stderr += f"\n(killed after {TIMEOUT_S} s)"
            results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.mark.parametrize("name", list(EXPECTED))
def test_example_runs_and_prints_its_table(runs, name):
    result = runs[name]
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{result.stderr[-3000:]}"
    for expected in EXPECTED[name]:
        if isinstance(expected, str):
            assert expected in result.stdout, f"{name} did not print {expected!r}:\n{result.stdout}"
        else:
            assert expected.search(result.stdout), f"{name} did not print a line matching {expected.pattern!r}:\n{result.stdout}"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_example_says_how_to_run_it_and_imports_only_torch_and_lossdsl(name):
    tree = ast.parse((EXAMPLES / name).read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring and f"python examples/{name}" in docstring
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) <= {"torch", "lossdsl"} | EXTRA_IMPORTS.get(name, set())



@pytest.fixture(scope="module")
def adult_example():
    """examples/adult_fairness.py as a module (its helpers, without running it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("adult_fairness", EXAMPLES / "adult_fairness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", range(4))
def test_adult_weighted_gaps_equal_fairlearn_with_sample_weights(adult_example, seed):
    """The bootstrap's gaps of weighted rows are fairlearn's per-group TPR and FPR under the same
    sample weights (female minus male)."""
    from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate

    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    target, sex, predicted = (rng.integers(0, 2, n) for _ in range(3))
    weights = rng.poisson(1.0, size=(3, n)).astype(np.float32)
    gaps = adult_example.weighted_gaps(predicted, target, sex, weights)
    for row, weight in zip(gaps, weights):
        frame = MetricFrame(
            metrics={"tpr": true_positive_rate, "fpr": false_positive_rate},
            y_true=target, y_pred=predicted, sensitive_features=sex,
            sample_params={"tpr": {"sample_weight": weight}, "fpr": {"sample_weight": weight}},
        )
        by_group = frame.by_group
        np.testing.assert_allclose(row[0], by_group.loc[0, "tpr"] - by_group.loc[1, "tpr"], atol=1e-6)
        np.testing.assert_allclose(row[1], by_group.loc[0, "fpr"] - by_group.loc[1, "fpr"], atol=1e-6)
