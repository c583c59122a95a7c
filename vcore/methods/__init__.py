"""Token-weighting methods: a registry of :class:`TokenWeighting` classes; ``build_method(cfg.method, context)``.

Importing a method's module registers it (:mod:`vcore.methods.registry`); the built-in ones are imported here, in the
order of tables and figures. A method of your own needs no line here: its YAML names it with ``_target_``
(docs/adding_a_method.md).
"""

from __future__ import annotations

from vcore.methods.base import MethodConfig, MethodContext, MicroBatch, StepCounts, TokenWeighting
from vcore.methods.registry import build_method, method_class, method_names, register

# Registration order is the order of tables and figures (SFT first), not the alphabet: keep isort out.
# isort: off
from vcore.methods.sft import SFT, SFTConfig, sft_weights
from vcore.methods.dft import DFT, DFTConfig, dft_weights
from vcore.methods.random import RandomConfig, RandomTokens, random_weights
from vcore.methods.iw_sft import IwSFT, IwSFTConfig, iw_sft_weights
from vcore.methods.vcore import VCORE, VCOREConfig, gibbs_weights, loss_ratio_alpha, paper_alpha
# isort: on

__all__ = [
    "DFT",
    "SFT",
    "VCORE",
    "DFTConfig",
    "IwSFT",
    "IwSFTConfig",
    "MethodConfig",
    "MethodContext",
    "MicroBatch",
    "RandomConfig",
    "RandomTokens",
    "SFTConfig",
    "StepCounts",
    "TokenWeighting",
    "VCOREConfig",
    "build_method",
    "dft_weights",
    "gibbs_weights",
    "iw_sft_weights",
    "loss_ratio_alpha",
    "method_class",
    "method_names",
    "paper_alpha",
    "random_weights",
    "register",
    "sft_weights",
]
