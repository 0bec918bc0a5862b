"""The optimizer: Adam against a float64 reference; sparse embedding updates: clipping and optimizer
state agree with the dense formulation."""
import copy

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


def test_adam_steps_equal_a_float64_reference_and_resume_from_its_state():
    """make_optimizer's Adam (fused where torch has a kernel) against the update written out in
    float64: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= lr m^ / (sqrt(v^) + eps), with
    L2 weight decay added to g; and a copy restored from its state_dict goes on identically."""
    config = build_config({"model": {"long_len": 16, "short_len": 4, "top_k": 5}, "train": {"weight_decay": 0.1}})
    torch.manual_seed(0)
    model = build_model(config.model, VOCAB)
    optimizer = make_optimizer(model, config.train)
    lr, (b1, b2), eps, wd = config.train.lr, (0.9, 0.999), 1e-8, config.train.weight_decay
    reference = [p.detach().double().clone() for p in model.parameters()]
    m = [torch.zeros_like(p) for p in reference]
    v = [torch.zeros_like(p) for p in reference]
    generator = torch.Generator().manual_seed(1)
    for step in range(1, 6):
        grads = [torch.randn(p.shape, generator=generator) for p in reference]
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        optimizer.step()
        for i, g in enumerate(grads):
            g = g.double() + wd * reference[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1 ** step), v[i] / (1 - b2 ** step)
            reference[i] = reference[i] - lr * m_hat / (v_hat.sqrt() + eps)
    for (name, p), expected in zip(model.named_parameters(), reference):
        torch.testing.assert_close(p.detach().double(), expected, rtol=0, atol=1e-6, msg=name)
    torch.manual_seed(0)
    restored = build_model(config.model, VOCAB)
    restored.load_state_dict(model.state_dict())
    resumed = make_optimizer(restored, config.train)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from disk: its own tensors
    grads = [torch.randn(p.shape, generator=generator) for p in reference]
    for pair in (model, restored):
        for p, g in zip(pair.parameters(), grads):
            p.grad = g.clone()
    optimizer.step()
    resumed.step()
    for p, q in zip(model.parameters(), restored.parameters()):
        assert torch.equal(p, q)


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
