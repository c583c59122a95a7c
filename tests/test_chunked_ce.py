"""Chunked per-token CE equals the full-logits loss: values, gradients and forward-mode derivatives (float64)."""

import pytest
import torch

from tests.helpers import devices, random_lm_batch, tiny_causal_lm
from vcore.methods.probe import jvp_scores, trainable_parameters
from vcore.ops.chunked_ce import check_supported, chunked_token_cross_entropy
from vcore.ops.forward import model_token_loss
from vcore.ops.losses import IGNORE_INDEX, token_cross_entropy


def data(B=2, T=9, H=6, V=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    labels = torch.randint(V, (B, T), generator=g)
    labels[0, :3] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX
    return hidden, weight, labels


def full(hidden, weight, labels):
    return token_cross_entropy(hidden @ weight.T, labels)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("chunk", [1, 4, 7, 100])
def test_values_and_gradients_equal_full_logits(chunk, device):
    hidden, weight, labels = (x.to(device) for x in data())
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    a, b = chunked_token_cross_entropy(h1, w1, labels, chunk), full(h2, w2, labels)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    upstream = torch.rand(a.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    (a * upstream).sum().backward()
    (b * upstream).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [2, 5])
def test_forward_mode_equals_full_logits(chunk):
    hidden, weight, labels = data()
    dh, dw = torch.randn_like(hidden), torch.randn_like(weight)
    _, ta = torch.func.jvp(lambda h, w: chunked_token_cross_entropy(h, w, labels, chunk), (hidden, weight), (dh, dw))
    _, tb = torch.func.jvp(lambda h, w: full(h, w, labels), (hidden, weight), (dh, dw))
    torch.testing.assert_close(ta, tb, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("device", devices())
def test_bf16_autocast_matches_full_logits_under_autocast(device):
    hidden, weight, labels = data(T=32, H=16, V=50)
    hidden, weight, labels = hidden.float().to(device), weight.float().to(device), labels.to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        a = chunked_token_cross_entropy(hidden, weight, labels, 8)
        b = token_cross_entropy(torch.nn.functional.linear(hidden, weight), labels)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "qwen3"])
def test_model_losses_gradients_and_jvp_scores_match(tmp_path, arch):
    dtype = torch.float64 if arch == "gpt2" else torch.float32
    tol = dict(rtol=1e-10, atol=1e-12) if arch == "gpt2" else dict(rtol=1e-5, atol=1e-6)
    out = {}
    for chunk in (0, 5):
        model = tiny_causal_lm(tmp_path / str(chunk), arch=arch, dtype=dtype)
        check_supported(model)
        batch = random_lm_batch()
        loss, mask = model_token_loss(model, batch, chunk_size=chunk)
        (loss * mask).sum().backward()
        params = trainable_parameters(model)
        g = [torch.ones_like(p) / p.numel() for p in params.values()]
        _, (scores,) = jvp_scores(model.eval(), params, g, [batch], chunk_size=chunk)
        out[chunk] = (loss.detach(), {n: p.grad for n, p in params.items()}, scores)
    torch.testing.assert_close(out[0][0], out[5][0], **tol)
    for n, gr in out[0][1].items():
        torch.testing.assert_close(out[5][1][n], gr, **tol)
    torch.testing.assert_close(out[0][2], out[5][2], **tol)


def test_training_with_chunked_loss_tied_embeddings_and_both_probes(make_cfg, tmp_path):
    from vcore.config import to_object
    from vcore.run.training import build_job

    cfg = make_cfg("model.loss_chunk_size=16", "method.probe.mode=jvp", "method.probe.fidelity_every=1")
    job = build_job(to_object(cfg), tmp_path)
    model = job.trainer.model
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as the tiny model is
    job.trainer.train()
    last = [h for h in job.trainer.state.log_history if "vcore/fidelity_pearson" in h][-1]
    assert last["vcore/fidelity_pearson"] > 0.99 and torch.isfinite(torch.tensor(last["train/nll"]))
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # the lm-head is back after every forward
