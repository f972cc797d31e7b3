"""Shared fixtures: the digits dataset is loaded once per session."""

import pytest
import torch
from hypothesis import settings

import fedlearn_lab as fl

# The machine is shared and noisy: hypothesis checks properties, not timings.
settings.register_profile("fedlearn", deadline=None)
settings.load_profile("fedlearn")
torch.set_num_threads(1)  # small models: one thread is as fast and far steadier


@pytest.fixture(scope="session")
def digits() -> fl.Dataset:
    return fl.load_digits()


@pytest.fixture
def small_cfg() -> fl.FedConfig:
    """A quick config: 10 devices, 3 rounds."""
    return fl.FedConfig(num_devices=10, participation=0.5, rounds=3, local_epochs=1)
