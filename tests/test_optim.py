"""Sparse embedding updates: clipping and optimizer state agree with the dense formulation."""
import pytest
import torch

from conftest import VOCAB, synthetic_batch
from etarec.config import build_config
from etarec.models import build_model
from etarec.train.optim import clip_gradients, make_optimizer


def model_pair():
    models = []
    for sparse in (False, True):
        config = build_config({"model": {"long_len": 16, "short_len": 4, "top_k": 5, "sparse_embeddings": sparse}})
        torch.manual_seed(0)
        models.append(build_model(config.model, VOCAB))
    return models, config


def test_sparse_clipping_equals_torch_dense_clipping():
    (dense, sparse), _ = model_pair()
    batch = synthetic_batch(batch=8)
    for model in (dense, sparse):
        (model(batch).sum() * 100).backward()  # large enough to be clipped
    expected_norm = torch.nn.utils.clip_grad_norm_(dense.parameters(), 1.0)
    norm = clip_gradients(list(sparse.parameters()), 1.0)
    assert abs(norm - float(expected_norm)) < 1e-3 * float(expected_norm)
    assert sparse.embeddings.item.weight.grad.is_sparse
    for (name, p_dense), p_sparse in zip(dense.named_parameters(), sparse.parameters()):
        got = p_sparse.grad.to_dense() if p_sparse.grad.is_sparse else p_sparse.grad
        torch.testing.assert_close(got, p_dense.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_sparse_step_touches_only_rows_in_the_batch_and_first_step_matches_adam():
    (dense, sparse), config = model_pair()
    batch = synthetic_batch(batch=8)
    optimizers = [make_optimizer(m, config.train) for m in (dense, sparse)]
    before = sparse.embeddings.item.weight.detach().clone()
    for model, optimizer in zip((dense, sparse), optimizers):
        model(batch).sum().backward()
        optimizer.step()
    touched = torch.zeros(VOCAB.num_items, dtype=torch.bool)
    touched[torch.cat([batch.history_items.flatten(), batch.target_item])] = True
    touched[0] = False  # padding row never learns
    changed = (sparse.embeddings.item.weight != before).any(1)
    assert not changed[~touched].any(), "rows outside the batch were updated"
    # Adam's first step is lr * g / (|g| + eps) ~ lr * sign(g); SparseAdam applies eps after the bias
    # correction (g / (|g| + eps / sqrt(1 - beta2))), so the two agree where |g| >> 3e-7
    clear = touched[:, None] & (dense.embeddings.item.weight.grad.abs() > 1e-4)
    torch.testing.assert_close(sparse.embeddings.item.weight[clear], dense.embeddings.item.weight[clear])
    state = optimizers[1].state_dict()
    optimizers[1].load_state_dict(state)
    assert len(state["optimizers"]) == 2


@pytest.mark.slow
def test_sparse_updates_reach_dense_adam_auc_within_seed_noise(tmp_path):
    from etarec.data.prepare import ensure_prepared
    from etarec.train.trainer import train

    def run(name, sparse, seed):
        config = build_config({
            "data": {"prepared_dir": str(tmp_path / "prepared")},
            "model": {"long_len": 64, "short_len": 16, "top_k": 16, "sparse_embeddings": sparse},
            "train": {"epochs": 1, "max_steps_per_epoch": 120, "seed": seed, "eval_batch_size": 4096},
        })
        data = ensure_prepared(config.data, log=lambda *_: None)
        return train(config, tmp_path / name, progress=False, log=lambda *_: None, data=data)["test"]["auc"]

    dense, dense_other_seed, sparse = run("dense", False, 1), run("dense2", False, 2), run("sparse", True, 1)
    noise = abs(dense - dense_other_seed)
    assert dense > 0.6 and sparse > 0.6
    assert abs(sparse - dense) <= max(0.01, 3 * noise), (dense, dense_other_seed, sparse)
