import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# CI runs the same examples every time (a failure reproduces); locally, hypothesis explores.
import os  # noqa: E402

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _fresh_dynamo_for_compile_tests(request):
    """Each test that compiles starts from an empty dynamo cache: every LossModule shares one
    ``forward``, so compile tests earlier in the run would use up its recompile limit."""
    if "compile" in request.node.name or "fullgraph" in request.node.name:
        torch.compiler.reset()
    yield
