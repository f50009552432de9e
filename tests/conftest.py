"""Shared fixtures: the real default model is loaded once per test session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    """Each kernel test at 1 and 2 torch threads (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lm():
    """The real default model (smollm2-135m), loaded once."""
    from moyu_core import models

    models.setup_compute()
    return models.load(models.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_lm():
    """A tiny random Llama (vocab 99, hidden 32, 2 layers) for fast hook and method tests."""
    import threading

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from moyu_core.models import LoadedModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel("tiny-llama", model, tokenizer=None, fingerprint="tiny", load_seconds=0.0,
                       lock=threading.RLock())


@pytest.fixture
def db(tmp_path):
    from moyu_core.store import Store

    s = Store(tmp_path / "test.duckdb")
    yield s
    s.close()
