"""Inference-Optim-LLM: a reproducible benchmark pipeline for LLM inference."""
__version__ = "0.2.0"
