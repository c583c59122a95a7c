"""vcore: token-weighted supervised fine-tuning for chain-of-thought data (SFT, DFT, Random, iw-SFT, VCORE)."""

__version__ = "0.1.0"
