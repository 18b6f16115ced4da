"""Bad input to the library gets a clear error and leaves nothing behind (the CLI's own: test_cli_input.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from internvl35.api import InternVL
from internvl35.checkpoint import CheckpointError, build_model, convert_checkpoint, load_model, save_checkpoint
from internvl35.config import ConfigError, InternVLConfig
from internvl35.data.image import ImageError, load_image
from internvl35.data.tokenizer import ChatTokenizer
from internvl35.engine import PromptTooLongError, Request, SamplingParams, score
from internvl35.engine.sampling import make_generator, sample
from internvl35.presets import preset


@pytest.fixture(scope="module")
def vl():
    torch.manual_seed(0)
    return InternVL.from_pretrained("tiny-test", max_seq_len=256)


# ---- checkpoints ---------------------------------------------------------------------------------------------


def test_a_checkpoint_written_over_another_loads_as_the_new_one(tmp_path):
    torch.manual_seed(0)
    model = build_model(preset("tiny-test-moe"))
    save_checkpoint(model, tmp_path, layout="hf", max_shard_bytes=30_000)  # an old sharded checkpoint
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    convert_checkpoint(tmp_path, tmp_path, layout="original")  # in place, to one file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    again = load_model(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    save_checkpoint(model, tmp_path, max_shard_bytes=40_000)  # and back to shards: the single file goes
    assert not (tmp_path / "model.safetensors").exists()
    load_model(tmp_path)


def test_an_index_cannot_point_outside_its_directory(tmp_path):
    inner = tmp_path / "ck"
    save_checkpoint(build_model(preset("tiny-test")), inner)
    (inner / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (inner / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_model(inner)
    (inner / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    with pytest.raises(CheckpointError, match="weight_map must map"):
        load_model(inner)


@pytest.mark.parametrize("text", ["null", "[1, 2]", '{"vision_config": null, "llm_config": {}}',
                                  '{"vision_config": {}, "llm_config": "oops"}'])
def test_a_malformed_config_is_a_config_error(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="config.json"):
        InternVLConfig.load(tmp_path)


# ---- text ------------------------------------------------------------------------------------------------


def test_text_that_is_not_utf8_is_a_value_error(vl):
    with pytest.raises(ValueError, match="not valid UTF-8"):
        vl.chat("caf\udce9")  # how Python hands on an undecodable byte of a command line
    with pytest.raises(ValueError, match="not valid UTF-8"):
        vl.chat("fine", history=[("caf\udce9", "ok")])


def test_a_corrupt_tokenizer_file_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match="tokenizer.json cannot be read"):
        ChatTokenizer.from_dir(tmp_path)


# ---- the engine and the API --------------------------------------------------------------------------------


def test_a_failed_batch_leaves_no_request_behind(vl):
    ok, long = Request([1, 2, 3], SamplingParams(max_new_tokens=4)), Request([4] * 300, SamplingParams())
    with pytest.raises(PromptTooLongError):
        vl.engine.generate([ok, long])
    assert not vl.engine.has_unfinished()
    real = vl.engine.step
    vl.engine.step = lambda: (_ for _ in ()).throw(KeyboardInterrupt)  # Ctrl-C during the first step
    try:
        with pytest.raises(KeyboardInterrupt):
            vl.engine.generate([ok, ok])
    finally:
        del vl.engine.step
    assert vl.engine.step == real and not vl.engine.has_unfinished()
    assert len(vl.engine.generate([ok])[0].token_ids) == 4


def test_mismatched_lists_and_wrong_types_are_named(vl):
    with pytest.raises(ValueError, match="2 prompts but 1 pixel_values"):
        vl.generate([[1, 2], [3, 4]], pixel_values=[None])
    inputs = vl.prepare("hi")
    with pytest.raises(ValueError, match="1 prompts but 2 responses"):
        vl.logprobs([inputs], [[1], [2]])
    with pytest.raises(ValueError, match="images must be a list"):
        vl.chat("what is this?", images="photo.png")
    with pytest.raises(ValueError, match="history item"):
        vl.chat("and now?", history=["ab"])
    with pytest.raises(ValueError, match="token ids must be ints"):
        score(vl.model, [([1, 2, 10**6], 1)])


def test_near_zero_temperature_samples_the_greedy_token():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 5
    params = [SamplingParams(temperature=1e-40, seed=i) for i in range(3)]
    assert sample(logits, params, [make_generator(p) for p in params]) == logits.argmax(-1).tolist()
    with pytest.raises(ValueError, match="seed must be an integer in"):
        SamplingParams(seed=10**30)


# ---- images ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_are_not_read_as_images(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="special file"):
        load_image(fifo)  # would block forever on the read
    if os.path.exists("/dev/zero"):
        with pytest.raises(ImageError, match="special file"):
            load_image("/dev/zero")  # would never end


def test_training_jsonl_is_read_as_generate_reads_its_input(tmp_path):
    """`train sft`'s JsonlSource shares `read_jsonl`: lines split at "\\n" only, errors name the line."""
    from internvl35.data.tokenizer import tiny_tokenizer
    from internvl35.train.data import JsonlSource

    tokenizer, config = tiny_tokenizer(), preset("tiny-test")
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"question": "a\u2028b", "answer": "c"}, ensure_ascii=False) + "\n\n")
    assert len(JsonlSource(data, tokenizer, config).rows) == 1
    data.write_text('{"question": "q", "answer": "a"}\n\n{"question": "q"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl: line 3: needs string fields 'question' and 'answer'"):
        JsonlSource(data, tokenizer, config)


def test_an_unknown_device_is_named_before_any_weight_is_read():
    with pytest.raises(ValueError, match="unknown device 'foo'"):
        InternVL.from_pretrained("tiny-test", device="foo")
