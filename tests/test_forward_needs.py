"""What a method asks of the training forward (entropy, top-k log-probabilities) comes from the chunked cross-entropy:
exact against float64 references written here, the same for packed and padded batches, from one forward, and never
from ``[T, vocab]`` logits."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers import devices, tiny_causal_lm, varied_rows
from vcore.data.collate import Collator
from vcore.ops import forward as forward_module
from vcore.ops.chunked_ce import chunked_token_cross_entropy, chunked_token_statistics
from vcore.ops.forward import ForwardNeeds, model_forward
from vcore.ops.losses import IGNORE_INDEX

NEEDS = ForwardNeeds(entropy=True, top_k=3)


def data(B=2, T=9, H=6, V=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    labels = torch.randint(V, (B, T), generator=g)
    labels[0, :3] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX
    return hidden, weight, labels


def reference(logits_row: torch.Tensor, k: int) -> tuple[float, list[float]]:
    """Entropy and the k largest log-probabilities of one float64 logit row, by an explicit log-sum-exp and sort."""
    row = [float(x) for x in logits_row]
    m = max(row)
    log_z = m + math.log(math.fsum(math.exp(x - m) for x in row))
    log_p = [x - log_z for x in row]
    return -math.fsum(math.exp(lp) * lp for lp in log_p), sorted(log_p, reverse=True)[:k]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_entropy_and_top_k_equal_float64_references(chunk, device):
    hidden, weight, labels = (x.to(device) for x in data())
    loss, extras = chunked_token_statistics(hidden, weight, labels, chunk, entropy=True, top_k=3)
    assert torch.equal(loss, chunked_token_cross_entropy(hidden, weight, labels, chunk))  # the loss is untouched
    logits = (hidden @ weight.T).cpu()
    ent, top_lp, top_id = (extras[k].cpu() for k in ("entropy", "top_k_log_probs", "top_k_ids"))
    checked = 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if t == 0 or labels[b, t] == IGNORE_INDEX:  # aligned like the loss: 0 where nothing is predicted
                assert ent[b, t] == 0 and (top_lp[b, t] == 0).all() and (top_id[b, t] == 0).all()
                continue
            h, lps = reference(logits[b, t - 1], 3)
            assert ent[b, t].item() == pytest.approx(h, rel=1e-12, abs=1e-14)
            assert top_lp[b, t].tolist() == pytest.approx(lps, rel=1e-12, abs=1e-14)
            assert top_id[b, t].tolist() == torch.argsort(logits[b, t - 1], descending=True)[:3].tolist()
            checked += 1
    assert checked == int(((labels != IGNORE_INDEX)[:, 1:]).sum())


def test_extras_carry_no_derivative_and_leave_gradients_and_jvp_of_the_loss_unchanged():
    hidden, weight, labels = data()
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    loss, extras = chunked_token_statistics(h1, weight, labels, 4, entropy=True, top_k=2)
    assert not any(x.requires_grad for x in extras.values())
    loss.sum().backward()
    chunked_token_cross_entropy(h2, weight, labels, 4).sum().backward()
    assert torch.equal(h1.grad, h2.grad)
    dh = torch.randn_like(hidden)
    _, ta = torch.func.jvp(lambda h: chunked_token_statistics(h, weight, labels, 4, entropy=True)[0], (hidden,), (dh,))
    _, tb = torch.func.jvp(lambda h: chunked_token_cross_entropy(h, weight, labels, 4), (hidden,), (dh,))
    assert torch.equal(ta, tb)


def test_model_forward_extras_equal_float64_references(tmp_path):
    """Through a model (GPT-2 architecture: float64 end to end), padded rows, against per-example full logits."""
    model = tiny_causal_lm(tmp_path, arch="gpt2").eval()
    rows = varied_rows(4)
    with torch.no_grad():
        out = model_forward(model, Collator(0)(rows), NEEDS, chunk_size=5)
    assert out.token_loss.dtype == out.entropy.dtype == torch.float64
    for i, row in enumerate(rows):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        for t, label in enumerate(row["labels"]):
            if t == 0 or label == IGNORE_INDEX:
                continue
            h, lps = reference(logits[t - 1], 3)
            assert out.entropy[i, t].item() == pytest.approx(h, rel=1e-10)
            assert out.top_k_log_probs[i, t].tolist() == pytest.approx(lps, rel=1e-10)
            assert out.top_k_mass[i, t].item() == pytest.approx(math.fsum(math.exp(x) for x in lps), rel=1e-10)
            assert out.log_prob[i, t].item() == pytest.approx(-out.token_loss[i, t].item(), rel=0)


@pytest.mark.parametrize("pack_length", [0, 16], ids=["one-row", "rows-of-16"])
def test_packed_extras_equal_padded(tmp_path, pack_length):
    model = tiny_causal_lm(tmp_path).eval()  # Qwen3 (packed rows keep attention inside each example), float64
    rows = varied_rows()
    with torch.no_grad():
        padded = model_forward(model, Collator(0)(rows), NEEDS, chunk_size=7)
        packed = model_forward(model, Collator(0, pack=True, pack_length=pack_length)(rows), NEEDS, chunk_size=7)
    width = padded.mask.shape[1]
    assert torch.equal(padded.mask, packed.mask[:, :width])
    for name in ("token_loss", "entropy", "top_k_log_probs", "top_k_mass"):
        a, b = getattr(padded, name), getattr(packed, name)[:, :width]
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    assert torch.equal(padded.top_k_ids * padded.mask[..., None], packed.top_k_ids[:, :width] * padded.mask[..., None])


class LargestVocabTensor(TorchDispatchMode):
    """Records the largest number of rows of any new tensor an op computes whose last dimension is the vocabulary
    (views of an op's inputs aside: the lm-head weight transposed is ``[H, V]``)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            new = isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs
            if new and t.dim() >= 1 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_one_forward_and_no_vocabulary_wide_tensor_beyond_a_chunk(tmp_path, monkeypatch, chunk_size):
    """``chunk_size=0`` (full logits for the loss alone) still computes the extras in chunks, of DEFAULT_CHUNK tokens
    (patched here to 4, so that 3 rows of up to 11 tokens span several chunks)."""
    monkeypatch.setattr(forward_module, "DEFAULT_CHUNK", 4)
    model = tiny_causal_lm(tmp_path, arch="gpt2", vocab_size=37).eval()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    batch = Collator(0)(varied_rows(3))
    spy = LargestVocabTensor(37)
    with torch.no_grad(), spy:
        model_forward(model, batch, NEEDS, chunk_size=chunk_size)
    assert len(calls) == 1  # one forward of the model
    assert 0 < spy.rows <= 4 < batch["input_ids"].numel()  # at most one chunk of logits at a time
    spy = LargestVocabTensor(37)
    with torch.no_grad(), spy:
        model_forward(model, batch, ForwardNeeds(), chunk_size=chunk_size)
    assert spy.rows == (batch["input_ids"].numel() if chunk_size == 0 else 4)  # the loss alone: as configured
