"""Exact resume on CUDA in bf16: a run resumed from its step-2 checkpoint ends bit-identical to the uninterrupted one
(tests/test_resume.py's in-process check, with ``trainer.use_cpu=false trainer.precision=bf16``).

Bit identity needs deterministic kernels: the test asks torch for them (``CUBLAS_WORKSPACE_CONFIG`` is set in
tests/gpu/conftest.py) and first checks that two uninterrupted runs agree, so a failure says which of the two broke.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import needs_cuda

pytestmark = needs_cuda()

CASES = {
    "full_jvp": ["method.probe.mode=jvp", "method.probe.every=3"],
    "lora_fd": [
        "model.lora.enabled=true",
        "model.lora.dropout=0.1",
        "method.probe.mode=finite_difference",
        "method.probe.every=3",
    ],
}


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before)


def final_weights(run) -> dict[str, torch.Tensor]:
    (file,) = (run / "final").glob("*.safetensors")
    return load_file(file)


@pytest.mark.parametrize("case", list(CASES))
def test_resume_on_cuda_ends_bit_identical(make_cfg, tmp_path, case, deterministic):
    from vcore.run.training import train

    base = [
        *CASES[case],
        "trainer.use_cpu=false",
        "trainer.precision=bf16",
        "trainer.max_steps=5",
        "trainer.save_steps=2",
        "trainer.save_total_limit=null",
        "eval.after_train=false",
        "trainer.eval_at_end=false",
    ]
    for run in ("a", "a2"):
        train(make_cfg(*base, f"output_dir={tmp_path / run}", "trainer.resume=never"))
    a, a2 = final_weights(tmp_path / "a"), final_weights(tmp_path / "a2")
    assert all(v.device.type == "cpu" for v in a.values())
    differ = [k for k in a if not torch.equal(a[k], a2[k])]
    assert not differ, (
        f"two uninterrupted CUDA runs differ ({len(differ)} tensors, e.g. {differ[:3]}): kernels not deterministic"
    )
    checkpoint = tmp_path / "a" / "checkpoints" / "checkpoint-2"
    train(make_cfg(*base, f"output_dir={tmp_path / 'b'}", f"trainer.resume={checkpoint}"))
    b = final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed CUDA run differs from the uninterrupted one"
