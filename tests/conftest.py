import os

import pytest
import torch

# Two processes with two OpenMP threads each on two cores slow torch down many-fold; tests use one.
torch.set_num_threads(int(os.environ.get("DDCORE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def mnist5k():
    from ddcore.data import load_dataset

    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def small(mnist5k):
    """mnist5k with 20 training images per class (the test split is unchanged)."""
    from ddcore.data import subset_per_class

    return subset_per_class(mnist5k, 20, seed=0)


@pytest.fixture
def tiny_model():
    from ddcore.models import ModelConfig

    return ModelConfig(width=8)
