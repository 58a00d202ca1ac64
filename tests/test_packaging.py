"""What installing lossdsl brings: numpy too, so that torch starts without its NumPy warning."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_numpy_is_a_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]}
    assert {"torch", "numpy"} <= names


def test_a_first_call_prints_no_warning():
    """In a fresh interpreter with every warning an error: no "Failed to initialize NumPy", nothing else."""
    script = (
        "import torch, lossdsl\n"
        "value = lossdsl.compile('mse()')(torch.zeros(3), torch.ones(3))\n"
        "print(float(value))\n"
    )
    run = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert "NumPy" not in run.stderr
    assert run.returncode == 0, run.stderr
    assert run.stdout == "1.0\n" and run.stderr == ""


def test_the_check_above_sees_the_warning_when_numpy_is_missing():
    """The same run with numpy hidden prints torch's warning: the test above can fail."""
    script = "import sys\nsys.modules['numpy'] = None\nimport torch, lossdsl\nlossdsl.compile('mse()')(torch.zeros(3), torch.ones(3))\n"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "Failed to initialize NumPy" in run.stderr
