import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser):
    parser.addoption("--run-html", action="store_true", default=False, help="run the headless-Chromium report check")


@pytest.fixture(scope="session")
def mnist_raw():
    from lib.data import ensure_mnist

    return ensure_mnist()
