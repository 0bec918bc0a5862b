from pathlib import Path

import pytest
import torch

from etarec.data.batch import Batch
from etarec.data.files import shared_roots
from etarec.nn.embeddings import Vocab

VOCAB = Vocab(num_users=10, num_items=200, num_categories=12, num_actions=6, profile_sizes=(3, 4))

# every device test runs on the CPU and on CUDA; `pytest -m cuda` runs the CUDA cases alone
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")])]


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs on a CUDA device; skipped where none is visible")


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device present: 'cpu', and 'cuda' where torch sees a GPU."""
    return torch.device(request.param)


def synthetic_batch(batch=4, long_len=16, short_len=4, seed=0, valid_from=None) -> Batch:
    """Random ids; row b has real behaviours in columns >= valid_from[b] (left padding)."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, VOCAB.num_items, (batch, long_len), generator=g)
    if valid_from is None:
        valid_from = torch.randint(0, long_len, (batch,), generator=g)
    mask = torch.arange(long_len)[None, :] >= torch.as_tensor(valid_from)[:, None]
    return Batch(
        user=torch.randint(1, VOCAB.num_users, (batch,), generator=g),
        user_profile=torch.stack([torch.randint(0, s, (batch,), generator=g) for s in VOCAB.profile_sizes], 1),
        target_item=torch.randint(2, VOCAB.num_items, (batch,), generator=g),
        target_category=torch.randint(2, VOCAB.num_categories, (batch,), generator=g),
        history_items=torch.where(mask, items, 0),
        history_categories=torch.where(mask, items % (VOCAB.num_categories - 2) + 2, 0),
        history_actions=torch.where(mask, torch.randint(1, VOCAB.num_actions, (batch, long_len), generator=g), 0),
        history_time_gaps=torch.where(mask, torch.randint(0, 10**8, (batch, long_len), generator=g), 0),
        history_mask=mask,
        labels=torch.randint(0, 2, (batch,), generator=g).float(),
        short_len=short_len,
    )


def shared_dataset(name: str) -> Path:
    """The shared copy of a raw dataset folder (see etarec.data.files.shared_roots), else skip."""
    roots = shared_roots()
    for root in roots:
        if (root / name).is_dir():
            return root / name
    pytest.skip(f"{name} is not available (looked in {', '.join(str(r) for r in roots)}); "
                "set ETAREC_DATA_ROOT to the folder that holds it")
