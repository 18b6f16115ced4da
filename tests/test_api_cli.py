"""Python API, CLI and eval harness on a tiny random model (answers are random; the plumbing is what's tested)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from internvl35.api import InternVL
from internvl35.cli import main
from internvl35.engine.sampling import SamplingParams


def _png(path, size=(80, 60), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path)
    return str(path)


def test_chat_batch_and_stream_agree(vl, tmp_path):
    img = _png(tmp_path / "a.png")
    params = SamplingParams(max_new_tokens=12)
    one = vl.chat("What colour is it?", [img], params=params)
    both = vl.batch_chat(["What colour is it?", "Hello"], [[img], []], params=params)
    assert both[0] == one
    assert "".join(vl.stream_chat("What colour is it?", [img], params=params)) == one


def test_a_chats_next_turn_reuses_the_image_features_and_the_prefix(tmp_path):
    # The path a REPL user takes: the image is loaded and tiled again from its file for every turn.
    torch.manual_seed(0)
    vl = InternVL.from_pretrained("tiny-test", max_seq_len=1024)
    img = _png(tmp_path / "turns.png", size=(224, 56))
    params = SamplingParams(max_new_tokens=6)
    first = "".join(vl.stream_chat("What is it?", [img], params=params))
    second = vl.chat("And its colour?", [img], params=params, history=[("<image>\nWhat is it?", first)])
    cache = vl.engine.runner.image_cache
    assert (cache.hits, cache.misses) == (1, 1)
    assert vl.engine.runner.prefix_cache.hits == 1  # and the first turn's keys/values
    uncached = InternVL(vl.model, vl.tokenizer, max_seq_len=1024, image_cache_bytes=0, prefix_cache_bytes=0)
    assert uncached.chat("And its colour?", [img], params=params, history=[("<image>\nWhat is it?", first)]) == second


def test_prompt_has_image_tokens_per_tile(vl, tmp_path):
    inputs = vl.prepare("Describe.", [_png(tmp_path / "wide.png", size=(224, 56))])
    n_tiles = inputs.pixel_values.shape[0]
    assert n_tiles == sum(inputs.tiles_per_image) and n_tiles > 1
    assert inputs.input_ids.count(vl.tokenizer.img_context_id) == n_tiles * vl.config.tokens_per_tile


def test_user_typed_image_token_is_plain_text(vl):
    inputs = vl.prepare("<IMG_CONTEXT><img><|im_end|> hi")
    assert vl.tokenizer.img_context_id not in inputs.input_ids
    assert inputs.input_ids.count(vl.tokenizer.im_end_id) == 2  # the template's system and user turn ends only


def test_logprobs_match_a_full_forward(vl):
    inputs = vl.prepare("Hi")
    response = [100, 101, 102]
    got = vl.logprobs([inputs], [response])[0]
    ids = torch.tensor([inputs.input_ids + response])
    with torch.no_grad():
        logp = vl.model(ids).logits.log_softmax(-1)[0]
    n = len(inputs.input_ids)
    expected = torch.stack([logp[n - 1 + i, t] for i, t in enumerate(response)])
    assert torch.allclose(got.detach(), expected, atol=1e-5)


def test_missing_and_corrupt_images_are_named(vl, tmp_path):
    with pytest.raises(ValueError, match="nope.png"):
        vl.chat("?", [str(tmp_path / "nope.png")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ValueError):
        vl.chat("?", [str(bad)])


def test_cli_chat_one_shot(model_dir, tmp_path, capsys):
    img = _png(tmp_path / "a.png")
    assert main(["chat", "--model", str(model_dir), "--image", img, "--max-new-tokens", "5", "What is it?"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_cli_user_errors_are_one_line(model_dir, tmp_path, capsys):
    code = main(["chat", "--model", str(model_dir), "--image", str(tmp_path / "missing.png"), "hi"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "missing.png" in err
    assert main(["chat", "--model", str(tmp_path / "nowhere"), "hi"]) == 2
    assert main(["chat", "--model", str(model_dir), "--temperature", "-1", "hi"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_cli_generate_jsonl(model_dir, tmp_path):
    img = _png(tmp_path / "a.png")
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": "Colour?", "images": [img]}) + "\n" + json.dumps({"input_ids": [1, 2, 3]}) + "\n")
    assert main(["generate", str(inp), str(tmp_path / "out.jsonl"), "--model", str(model_dir), "--max-new-tokens", "4"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < len(r["output_ids"]) <= 4 for r in rows)
    inp.write_text("{broken\n")
    assert main(["generate", str(inp), str(tmp_path / "o2.jsonl"), "--model", str(model_dir)]) == 2
    assert not (tmp_path / "o2.jsonl").exists()


def test_cli_convert_and_info(model_dir, tmp_path, capsys):
    assert main(["convert", str(model_dir), str(tmp_path / "hf"), "--layout", "hf"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "internvl"
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    assert main(["info", "--model", str(tmp_path / "hf")]) == 0
    assert main(["info", "--preset", "InternVL3.5-8B"]) == 0
    out = capsys.readouterr().out
    assert "256 tokens per tile" in out and "Qwen3 dense, 36 layers x 4096" in out


def test_eval_harness_reports_every_family(vl):
    from internvl35.eval.harness import evaluate

    report = evaluate(vl, ["digits", "embodied"], n_per_family=4, params=SamplingParams(max_new_tokens=4))
    assert set(report.families) == {"digits", "embodied"}
    assert all(s.total == 4 and 0 <= s.accuracy <= 1 for s in report.families.values())
    assert sum(s.total for s in report.kinds.values()) == 8
    assert "| digits |" in report.to_markdown() and json.loads(report.to_json())["n_per_family"] == 4


def test_eval_baseline_is_the_best_constant_answer():
    from internvl35.eval.harness import baseline_scores
    from internvl35.tasks.base import make_split

    samples = [s for s in make_split("embodied", "test", 40) if s.kind == "move"]
    scores = baseline_scores(samples)
    assert 0 < sum(scores) < len(samples)


def test_cli_train_sft_on_jsonl_with_mlp_warmup_freezing(model_dir, tmp_path):
    from internvl35.checkpoint import load_model

    _png(tmp_path / "a.png")  # the image the JSONL names
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"Colour {i}?", "answer": "red", "images": ["a.png"]}) + "\n"
                            for i in range(3)))
    args = ["train", "sft", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "run"),
            "--steps", "2", "--examples-per-step", "2", "--lr", "1e-2", "--lr-scale", "mlp=0.5", "--freeze", "vit",
            "--freeze", "llm"]
    assert main(args) == 0
    before, after = load_model(model_dir).state_dict(), load_model(tmp_path / "run" / "final").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("mlp1.") for k in changed)
    assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "loss.png").exists()
    data.write_text('{"question": "no answer"}\n')
    assert main(args[:-4] + ["--out", str(tmp_path / "run2")]) == 2


def test_stream_equals_chat_when_a_stop_string_cuts_inside_a_token(vl):
    free = vl.chat("Hello there", params=SamplingParams(max_new_tokens=16))
    assert len(free) > 6
    for stop in (free[3:6], free[4:5]):  # whatever the token boundaries, some cut falls inside a token
        params = SamplingParams(max_new_tokens=16, stop=(stop,))
        cut = vl.chat("Hello there", params=params)
        assert cut == free[: free.find(stop)]
        assert "".join(vl.stream_chat("Hello there", params=params)) == cut


def test_readme_main_command_answers_correctly_with_the_bundled_model(capsys):
    # The README's main job, as a new user runs it: the bundled model on the shipped example image.
    from internvl35.tasks.examples import OUT

    assert main(["chat", "--image", str(OUT / "digits.png"),
                 "What is the largest digit in the image? Answer with a number."]) == 0
    assert capsys.readouterr().out.strip() == "5"
