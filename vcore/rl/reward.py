"""The RL reward: 1 for a completion whose final ``\\boxed{}`` answer math-verify finds equal to the gold, else 0.

It is evaluation's grader, not a copy of it: the same answer extraction (:func:`vcore.boxed.extract_boxed` with the
data's ``answer_scope``) and the same math-verify call in worker processes with a hard time limit
(:func:`vcore.eval.math_grader.grade_many`), so a completion earns reward exactly when evaluation would count it
correct. Like verl's default math reward (the paper's RL framework) there is no format bonus: a completion without a
final box, one cut off before it, and a wrong answer all get 0.

TRL calls the reward with each completion's token ids and every dataset column as a keyword (``answer`` here). The
reward decodes the ids itself, special tokens skipped, exactly as evaluation decodes a generation: TRL's own decoded
text can differ (for a tokenizer with a response schema it splits off the reasoning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vcore.boxed import extract_boxed
from vcore.eval.config import GradingConfig
from vcore.eval.math_grader import grade_many
from vcore.eval.workers import WorkerPool


class BoxedMathReward:
    """``reward(prompts, completions, answer, ...) -> [0.0 | 1.0]``; close it (or use ``with``) to stop its workers.

    Besides the reward, logs through TRL's ``log_metric`` the share of completions with no final answer and the share
    whose grading failed (math-verify timeout or error), so a reward that drops because the model stopped boxing its
    answers is told apart from one that drops because the answers got worse.
    """

    __name__ = "accuracy"  # TRL names the reward's metrics after it: rewards/accuracy/mean

    def __init__(
        self,
        tokenizer: Any,
        answer_scope: str = "after_think",
        workers: int = 2,
        timeout_s: float | None = None,
        eos_token_ids: Sequence[int] = (),
    ) -> None:
        self.tokenizer, self.answer_scope = tokenizer, answer_scope
        self.timeout_s = GradingConfig().math_timeout_s if timeout_s is None else timeout_s  # evaluation's limit
        # Evaluation cuts a generation at the first of the model's end tokens (Qwen3: <|im_end|> and <|endoftext|>);
        # TRL's HF rollouts stop at the tokenizer's one only: cut the same way, so text after it is never graded.
        self.eos_token_ids = set(eos_token_ids)
        self.pool = WorkerPool(workers)

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        answer: Sequence[str] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        if answer is None:
            raise KeyError("the RL dataset has no 'answer' column: the reward needs each prompt's gold answer")
        texts = self.tokenizer.batch_decode([self._until_eos(ids) for ids in completion_ids], skip_special_tokens=True)
        preds = [extract_boxed(t, self.answer_scope) for t in texts]
        verdicts = grade_many(
            list(answer), preds, workers=self.pool.size, timeout_s=self.timeout_s, progress=False, pool=self.pool
        )
        if log_metric is not None and verdicts:
            n = len(verdicts)
            log_metric("no_answer_rate", sum(v.status == "no_answer" for v in verdicts) / n)
            log_metric("grading_failure_rate", sum(v.status in ("timeout", "error") for v in verdicts) / n)
        return [1.0 if v.correct else 0.0 for v in verdicts]

    def _until_eos(self, ids: Sequence[int]) -> list[int]:
        ids = list(ids)
        stop = next((i for i, t in enumerate(ids) if t in self.eos_token_ids), None)
        return ids if stop is None else ids[: stop + 1]

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> BoxedMathReward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
