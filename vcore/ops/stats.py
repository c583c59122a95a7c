"""Per-step training diagnostics, accumulated on device and turned into floats only when a log line is written.

Nothing here syncs the host on the hot path: every micro-batch adds detached tensors; :meth:`flush` runs once per
``trainer.logging_steps``.
"""

from __future__ import annotations

import time

import torch


class StepStats:
    def __init__(self, eos_token_id: int | None = None, reasoning_vocab: torch.Tensor | None = None) -> None:
        self.eos_token_id = eos_token_id
        # [vocab] bool (vcore.data.token_classes): splits the weight between reasoning-bearing and style tokens.
        self.reasoning_vocab = reasoning_vocab
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.mins: dict[str, torch.Tensor] = {}
        self.maxs: dict[str, torch.Tensor] = {}
        self.step_diag: dict[str, list[torch.Tensor]] = {}
        self.t0 = time.perf_counter()

    def _add(self, key: str, value: torch.Tensor) -> None:
        v = value.detach().double()
        self.sums[key] = self.sums[key] + v if key in self.sums else v

    def add_micro_batch(self, token_loss, weights, mask, loss, labels, input_tokens) -> None:
        """One micro-batch of the training step: ``token_loss``, ``weights``, ``mask`` are ``[B, T]``."""
        w = weights.detach().double()[mask]
        self._add("nll_sum", (token_loss.detach().double() * mask).sum())
        self._add("weighted_loss", loss)
        self._add("supervised_tokens", mask.sum())
        self._add("input_tokens", input_tokens)
        self._add("w_sum", w.sum())
        self._add("w_sq_sum", (w * w).sum())
        self._add("w_below_0_1", (w < 0.1).sum())
        if w.numel():
            self.mins["w"] = torch.minimum(self.mins["w"], w.min()) if "w" in self.mins else w.min()
            self.maxs["w"] = torch.maximum(self.maxs["w"], w.max()) if "w" in self.maxs else w.max()
        if self.reasoning_vocab is not None:
            vocab = self.reasoning_vocab.to(labels.device)
            style = mask & ~vocab[labels.clamp(0, vocab.numel() - 1)]
            self._add("w_style_sum", (weights.detach().double() * style).sum())
            self._add("style_tokens", style.sum())
        if self.eos_token_id is not None:
            eos = mask & labels.eq(self.eos_token_id)
            self._add("w_eos_sum", (weights.detach().double() * eos).sum())
            self._add("eos_tokens", eos.sum())

    def add_step(self, diagnostics: dict[str, torch.Tensor]) -> None:
        for k, v in diagnostics.items():
            self.step_diag.setdefault(k, []).append(v.detach().float().reshape(()))

    def flush(self, num_steps: int) -> dict[str, float]:
        """Averages over the steps since the last flush, as floats; resets the accumulators."""
        if not self.sums:
            return {}
        s = {k: float(v) for k, v in self.sums.items()}
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        n = max(s["supervised_tokens"], 1.0)
        mean = s["w_sum"] / n
        out = {
            "train/nll": s["nll_sum"] / n,
            "train/weighted_loss": s["weighted_loss"] / max(num_steps, 1),
            "train/supervised_tokens_per_s": s["supervised_tokens"] / elapsed,
            "train/tokens_per_s": s["input_tokens"] / elapsed,
            "weights/mean": mean,
            "weights/std": max(s["w_sq_sum"] / n - mean * mean, 0.0) ** 0.5,
            "weights/min": float(self.mins.get("w", torch.tensor(float("nan")))),
            "weights/max": float(self.maxs.get("w", torch.tensor(float("nan")))),
            "weights/frac_below_0_1": s["w_below_0_1"] / n,
            # Kish effective sample size over tokens, as a fraction of the tokens: 1 when all weights are equal.
            "weights/ess_frac": (s["w_sum"] ** 2 / s["w_sq_sum"] / n) if s["w_sq_sum"] > 0 else 0.0,
        }
        if s.get("eos_tokens", 0) > 0:
            out["weights/eos_mean"] = s["w_eos_sum"] / s["eos_tokens"]
        if "style_tokens" in s and s["w_sum"] > 0:
            # The share of the weight on style tokens, and what uniform weights would give (their share of tokens).
            out["weights/style_share"] = s["w_style_sum"] / s["w_sum"]
            out["weights/style_token_frac"] = s["style_tokens"] / n
        for k, vals in self.step_diag.items():
            out[k] = float(torch.stack(vals).nanmean())
        self._reset()
        return out
