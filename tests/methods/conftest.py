import pytest
import torch

from hf_transfer.methods import StepBatch


def build_batch(
    n_source: int,
    n_target: int,
    *,
    feature_dim: int = 5,
    num_labels: int = 3,
    progress: float = 0.5,
    seed: int = 0,
    shift: float = 0.0,
    requires_grad: bool = True,
) -> StepBatch:
    """Source rows then target rows, as the trainer builds them; target features shifted by ``shift``."""
    gen = torch.Generator().manual_seed(seed)
    n = n_source + n_target
    features = torch.randn(n, feature_dim, generator=gen)
    features[n_source:] += shift
    logits = torch.randn(n, num_labels, generator=gen)
    labels = torch.cat([torch.randint(0, num_labels, (n_source,), generator=gen), torch.full((n_target,), -100)])
    domain = torch.cat([torch.zeros(n_source, dtype=torch.long), torch.ones(n_target, dtype=torch.long)])
    features.requires_grad_(requires_grad)
    logits.requires_grad_(requires_grad)
    return StepBatch(logits=logits, features=features, labels=labels, domain=domain, progress=progress)


@pytest.fixture
def make_batch():
    return build_batch


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: one intra-op thread is faster, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
