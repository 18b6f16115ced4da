"""Fixtures shared by the API and CLI tests: a tiny random model, in memory and saved as a model directory."""

from __future__ import annotations

import pytest
import torch

from internvl35.api import InternVL
from internvl35.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def vl():
    torch.manual_seed(0)
    return InternVL.from_pretrained("tiny-test", max_seq_len=1024)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vl):
    path = tmp_path_factory.mktemp("tiny")
    save_checkpoint(vl.model, path)
    vl.tokenizer.save(path)
    return path
