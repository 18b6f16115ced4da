"""CLI input handling: every bad input is one `error:` line and a non-zero exit, found before the model loads
where it can be; an interrupted `generate` keeps its finished rows; the chat REPL survives a bad turn."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

from internvl35 import cli
from internvl35.cli import main
from internvl35.engine.engine import Engine
from tests.test_api_cli import _png


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of one in-process run, whether the error came from argparse or a subcommand."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _one_error_line(err: str) -> str:
    """argparse prints its usage first; the error itself must be exactly one line."""
    lines = err.strip().splitlines()
    assert "error: " in lines[-1] and all("error" not in line for line in lines[:-1])
    return lines[-1]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: these errors must be found before that."""
    def refuse(*args):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(cli, "_load", refuse)


# ---- generate ----------------------------------------------------------------------------------------------


def test_generate_checks_the_output_path_before_loading_the_model(tmp_path, capsys, no_model):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"input_ids": [1, 2]}\n')
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("")
    for out, named in ((tmp_path / "outdir", "is a directory"), (tmp_path / "afile" / "o.jsonl", "is not a directory")):
        code, err = _cli(["generate", str(inp), str(out), "--model", "tiny-test"], capsys)
        assert code == 2 and err.count("\n") == 1 and named in err and str(out) in err


def test_generate_keeps_the_finished_rows_when_interrupted(model_dir, tmp_path, monkeypatch, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"input_ids": [100, 101, 200 + i]} for i in range(20)]  # more than one batch (16 slots)
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    finished: list[int] = []
    real_step = Engine.step

    def step_then_interrupt(self):
        if finished:
            raise KeyboardInterrupt
        outs = real_step(self)
        finished.extend(o.request_id for o in outs if o.finished)
        return outs

    monkeypatch.setattr(Engine, "step", step_then_interrupt)
    code, err = _cli(["generate", str(inp), str(out), "--model", str(model_dir), "--max-new-tokens", "2"], capsys)
    assert code == 130 and not out.exists()
    assert 0 < len(finished) < len(rows)
    assert f"kept the {len(finished)} of {len(rows)} rows that had finished in {out}.partial" in err
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl.partial").read_text().splitlines()]
    ids = [r["input_ids"] for r in kept]
    assert len(kept) == len(finished) and ids == [r["input_ids"] for r in rows if r["input_ids"] in ids]
    assert all(r["finish_reason"] in ("stop", "length") and r["output_ids"] for r in kept)
    monkeypatch.setattr(Engine, "step", real_step)  # run again to the end: OUT supersedes the partial file
    assert _cli(["generate", str(inp), str(out), "--model", str(model_dir), "--max-new-tokens", "2"], capsys)[0] == 0
    assert len(out.read_text().splitlines()) == len(rows) and not (tmp_path / "out.jsonl.partial").exists()


BAD_ROWS = [
    ('{"question": "hi", "thinking": "false"}', "'thinking' must be true or false"),
    ('{"input_ids": [1.0, 2]}', "'input_ids' must be a list of integers"),
    ('{"input_ids": [true, 2]}', "'input_ids' must be a list of integers"),
    ('{"input_ids": [1], "images": []}', "takes no other key, got 'images'"),
    ('{"question": 3}', "'question' must be a string"),
    ('{"question": "hi", "images": "a.png"}', "'images' must be a list"),
    ('{"question": "hi", "temprature": 1}', "unknown key 'temprature'; allowed: question, images, thinking"),
    ('{"images": []}', "neither 'question' nor 'input_ids'"),
    ('[1, 2]', "expected a JSON object"),
    ('{"input_ids": [NaN]}', "NaN is not allowed"),
    ('{"input_ids": [1], "x": Infinity}', "Infinity is not allowed"),
    ('{"question": "caf\\udce9"}', "not valid UTF-8"),
    ('{broken', "not valid JSON"),
]


@pytest.mark.parametrize("line, message", BAD_ROWS)
def test_generate_names_the_line_of_a_bad_row(tmp_path, capsys, no_model, line, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text('\n{"question": "fine"}\n\n' + line + "\n")  # blank lines count: the bad row is line 4
    code, err = _cli(["generate", str(inp), str(tmp_path / "out.jsonl"), "--model", "tiny-test"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {inp}: line 4: ") and message in err


@pytest.mark.parametrize("line, message", [
    ('{"question": "hi", "images": ["missing.png"]}', "missing.png"),
    ('{"input_ids": [1]}', "exceeds the engine context"),  # with --max-new-tokens past the context
])
def test_generate_names_the_line_of_a_row_the_model_cannot_take(model_dir, tmp_path, capsys, line, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n" + line + "\n")
    args = ["generate", str(inp), str(tmp_path / "out.jsonl"), "--model", str(model_dir)]
    code, err = _cli(args + (["--max-new-tokens", "100000"] if "input_ids" in line else []), capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {inp}: line 2: ") and message in err


def test_generate_rejects_a_bom_or_a_non_utf8_file(tmp_path, capsys, no_model):
    inp = tmp_path / "in.jsonl"
    for data, message in ((b'\xef\xbb\xbf{"input_ids": [1]}\n', f"{inp}: starts with a byte order mark"),
                          (b'{"input_ids": [1]}\n{"question": "caf\xe9"}\n', f"{inp}: line 2: not valid UTF-8")):
        inp.write_bytes(data)
        code, err = _cli(["generate", str(inp), str(tmp_path / "out.jsonl"), "--model", "tiny-test"], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err


def test_generate_splits_rows_at_newlines_only(model_dir, tmp_path, capsys):
    # U+2028 and \x85 may stand unescaped inside a JSON string; str.splitlines would cut the row there.
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"question": "a\u2028b\x85c"}\n{"input_ids": [1, 2]}\n', encoding="utf-8")
    code, _ = _cli(["generate", str(inp), str(out), "--model", str(model_dir), "--max-new-tokens", "2"], capsys)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and [r.get("question") for r in rows] == ["a\u2028b\x85c", None]


# ---- chat --------------------------------------------------------------------------------------------------


def _repl(model_dir, monkeypatch, capsys, lines: str, *flags: str) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", "--model", str(model_dir), "--max-new-tokens", "3", *flags]) == 0
    return capsys.readouterr().out


def test_repl_reports_a_bad_line_and_goes_on_with_its_history(model_dir, monkeypatch, capsys):
    from internvl35.api import InternVL

    histories = []
    real = InternVL.stream_chat

    def spy(self, question, images=(), **kw):
        histories.append(len(kw["history"]))
        return real(self, question, images, **kw)

    monkeypatch.setattr(InternVL, "stream_chat", spy)
    out = _repl(model_dir, monkeypatch, capsys, "hello\ncaf\udce9\nagain\n/quit\n")
    assert out.count("error: ") == 1 and "the line is not valid UTF-8" in out
    assert histories == [0, 1]


def test_repl_survives_undecodable_bytes_on_a_pipe(model_dir):
    # Strictly decoded, the bad byte took the REPL (and every piped line after it) down with a traceback.
    run = subprocess.run([sys.executable, "-m", "internvl35.cli", "chat", "--model", str(model_dir),
                          "--max-new-tokens", "2"], input=b"caf\xe9\nhello\n/quit\n", capture_output=True,
                         env={"PYTHONIOENCODING": "utf-8:strict", "PATH": ""}, timeout=120)
    out = run.stdout.decode("utf-8", "replace")
    assert run.returncode == 0 and b"Traceback" not in run.stderr
    assert out.count("error: ") == 1 and out.count(">>> ") == 3  # the bad line, hello, /quit


def test_repl_does_not_keep_an_image_that_failed(model_dir, tmp_path, monkeypatch, capsys):
    out = _repl(model_dir, monkeypatch, capsys, f"/image {tmp_path / 'nope.png'}\nhello\nmore\n/quit\n")
    assert out.count("error: ") == 1 and "nope.png" in out


def test_repl_keeps_its_images_when_a_turn_fails(model_dir, tmp_path, monkeypatch, capsys):
    from internvl35.api import InternVL

    img = _png(tmp_path / "a.png")
    seen = []
    real = InternVL.stream_chat

    def fail_once(self, question, images=(), **kw):
        seen.append(list(images))
        if len(seen) == 1:
            raise ValueError("the first turn fails")
        return real(self, question, images, **kw)

    monkeypatch.setattr(InternVL, "stream_chat", fail_once)
    out = _repl(model_dir, monkeypatch, capsys, f"/image {img}\nfirst\nsecond\nthird\n/quit\n")
    assert out.count("error: ") == 1 and seen == [[img]] * 3  # the retry and the later turn show the image


def test_chat_rejects_a_non_utf8_question_before_loading_the_model(capsys, no_model):
    code, err = _cli(["chat", "--model", "tiny-test", "caf\udce9"], capsys)
    assert code == 2 and err.count("\n") == 1 and "the question is not valid UTF-8" in err


# ---- convert and flags -------------------------------------------------------------------------------------


def test_convert_to_an_existing_file_is_one_line(model_dir, tmp_path, capsys):
    dst = tmp_path / "taken"
    dst.write_text("keep me")
    code, err = _cli(["convert", str(model_dir), str(dst), "--layout", "hf"], capsys)
    assert code == 2 and err.count("\n") == 1 and "exists and is not a directory" in err
    assert dst.read_text() == "keep me"


@pytest.mark.parametrize("argv, message", [
    (["convert", "a", "b", "--layout", "hf", "--max-shard-gb", "0"], "--max-shard-gb: must be a finite number > 0"),
    (["convert", "a", "b", "--layout", "hf", "--max-shard-gb", "-1"], "--max-shard-gb: must be a finite number > 0"),
    (["convert", "a", "b", "--layout", "hf", "--max-shard-gb", "nan"], "--max-shard-gb: must be a finite number > 0"),
    (["chat", "--device", "foo", "hi"], "--device: unknown device 'foo'"),
    (["generate", "i", "o", "--device", "cuda:x"], "--device: unknown device 'cuda:x'"),
    (["chat", "--video", "v.gif", "--num-frames", "0", "hi"], "--num-frames: must be an integer >= 1"),
    (["chat", "--num-frames", "-3", "hi"], "--num-frames: must be an integer >= 1"),
    (["chat", "--seed", "99999999999999999999999", "hi"], "--seed: the seed must be in [0, 2**63-1]"),
    (["chat", "--seed", "-1", "hi"], "--seed: the seed must be in [0, 2**63-1]"),
])
def test_bad_flags_are_one_line(capsys, no_model, argv, message):
    code, err = _cli(argv, capsys)
    assert code == 2 and message in _one_error_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(capsys, no_model):
    code, err = _cli(["eval", "--device", "cuda"], capsys)
    assert code == 2 and "CUDA is not available" in _one_error_line(err)
