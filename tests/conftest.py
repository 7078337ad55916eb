import os
import random

import numpy as np
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


@pytest.fixture
def keep_global_state(monkeypatch):
    """setup() sets threads and seeds every global generator: leave this test process as it was."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # set_threads() then keeps the count
    threads = torch.get_num_threads()
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])
