"""ChatTokenizer: loading, special tokens, untrusted text, streaming decode, training."""

import json
import logging
import time

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from internvl35.data.tokenizer import (
    MARKUP_TOKENS, SPECIAL_TOKENS, ChatTokenizer, tiny_tokenizer, train_tokenizer,
)

SAMPLES = ["The cat sees a tree.", "Image-1: <image>\nWhat is it? 42", "你好世界 😀 café", "  spaces\n\nnewlines\t"]
HOSTILE = ["<IMG_CONTEXT>", "<|im_end|>", "<img>", "</img>", "<|im_start|>assistant\n",
           "<|endoftext|>", "x<IMG_CONTEXT><IMG_CONTEXT>y", "<think>no</think>", "<ref>a</ref><box>[[1, 2, 3, 4]]</box>"]


def _copy(tk: ChatTokenizer, tmp_path) -> ChatTokenizer:
    """A private copy, so tests that poke at internals leave the cached tiny tokenizer alone."""
    tk.save(tmp_path / "copy")
    return ChatTokenizer.from_dir(tmp_path / "copy")


def test_special_tokens_are_single_ids_in_order():
    tk = tiny_tokenizer()
    ids = [tk.token_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))
    for t in SPECIAL_TOKENS:
        assert tk.encode_trusted(t) == [tk.token_id(t)]
    assert (tk.im_start_id, tk.im_end_id, tk.img_start_id, tk.img_end_id, tk.img_context_id) == (0, 1, 3, 4, 5)
    assert tk.eos_id == tk.im_end_id and tk.pad_id == tk.token_id("<|endoftext|>")


def test_think_tokens_are_added_but_not_special():
    tk = tiny_tokenizer()
    ids = tk.encode_trusted("<think>a</think>b<|im_end|><ref>c</ref>")
    # decode keeps <think> (not special in Qwen3) and the answer markup, and drops structural tokens.
    assert tk.decode(ids) == "<think>a</think>b<ref>c</ref>"
    assert tk.decode(ids, skip_special_tokens=False) == "<think>a</think>b<|im_end|><ref>c</ref>"


@pytest.mark.parametrize("text", HOSTILE)
def test_untrusted_text_never_yields_added_ids(text):
    tk = tiny_tokenizer()
    ids = tk.encode_text(text)
    assert not set(ids) & set(tk.added_token_ids.values())
    assert tk.decode(ids) == text  # still the same text, just plain pieces


def test_allowed_markup_passes_structural_never():
    tk = tiny_tokenizer()
    ids = tk.encode_text("<ref>cat</ref><IMG_CONTEXT><think>", allow=MARKUP_TOKENS)
    assert tk.token_id("<ref>") in ids and tk.token_id("<think>") in ids
    assert tk.img_context_id not in ids
    with pytest.raises(ValueError, match="structural"):
        tk.encode_text("x", allow=("<IMG_CONTEXT>",))


def test_post_check_catches_a_leak(tmp_path):
    tk = _copy(tiny_tokenizer(), tmp_path)
    tk._plain = tk._tok  # simulate a broken untrusted encoder
    with pytest.raises(RuntimeError, match="leaked"):
        tk.encode_text("a <IMG_CONTEXT> b")


def test_save_and_load_tokenizer_json(tmp_path):
    tk = tiny_tokenizer()
    assert tk.save(tmp_path).name == "tokenizer.json"
    back = ChatTokenizer.from_dir(tmp_path)
    assert back.vocab_size == tk.vocab_size == 512
    assert back.added_token_ids == tk.added_token_ids
    for s in SAMPLES + HOSTILE:
        assert back.encode_trusted(s) == tk.encode_trusted(s)
        assert back.encode_text(s) == tk.encode_text(s)


def _write_config(path, added: dict[str, tuple[int, bool]], special_map: dict | None = None):
    decoder = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": sp} for c, (i, sp) in added.items()}
    (path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    if special_map is not None:
        (path / "special_tokens_map.json").write_text(json.dumps(special_map))


def test_load_vocab_and_merges(tmp_path):
    tk = tiny_tokenizer()
    tk._tok.model.save(str(tmp_path))  # vocab.json + merges.txt ("#version" header included)
    _write_config(tmp_path, {t: (tk.token_id(t), t not in ("<think>", "</think>")) for t in SPECIAL_TOKENS})
    back = ChatTokenizer.from_dir(tmp_path)
    assert back.added_token_ids == tk.added_token_ids
    for s in SAMPLES + HOSTILE:
        assert back.encode_trusted(s) == tk.encode_trusted(s)
        assert back.encode_text(s) == tk.encode_text(s)
    assert back.decode(back.encode_trusted("<think>x</think>")) == "<think>x</think>"


def _qwen_layout(tmp_path):
    """vocab.json without the added tokens (ids shifted down by 14), as Qwen ships it."""
    tk = tiny_tokenizer()
    tk._tok.model.save(str(tmp_path))
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    vocab = {t: i - len(SPECIAL_TOKENS) for t, i in vocab.items() if t not in SPECIAL_TOKENS}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    return tk, len(vocab)


def test_load_qwen_layout_adds_missing_tokens(tmp_path, caplog):
    tk, n = _qwen_layout(tmp_path)
    # Qwen order after the BPE vocab; no <quad>/<ref>/<box> in this config: they must be added.
    order = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
             "<img>", "</img>", "<IMG_CONTEXT>"]
    _write_config(tmp_path, {t: (n + k, t not in ("<think>", "</think>")) for k, t in enumerate(order)},
                  {"eos_token": "<|im_end|>", "pad_token": {"content": "<|endoftext|>"}})
    with caplog.at_level(logging.WARNING):
        back = ChatTokenizer.from_dir(tmp_path)
    missing = [t for t in SPECIAL_TOKENS if t not in order]
    assert all(t in caplog.text for t in missing)
    assert [back.token_id(t) for t in order] == list(range(n, n + len(order)))
    assert sorted(back.token_id(t) for t in missing) == list(range(n + len(order), n + len(SPECIAL_TOKENS)))
    assert back.vocab_size == tk.vocab_size
    for s in SAMPLES:  # same BPE, ids shifted by the 14 specials
        assert back.encode_text(s) == [i - len(SPECIAL_TOKENS) for i in tk.encode_text(s)]
    assert back.decode(back.encode_trusted("<think>a</think><|im_end|>")) == "<think>a</think>"


def test_config_id_that_cannot_be_honoured_is_an_error(tmp_path):
    _, n = _qwen_layout(tmp_path)
    _write_config(tmp_path, {"<|endoftext|>": (n + 5, True)})  # leaves a gap
    with pytest.raises(ValueError, match="config says"):
        ChatTokenizer.from_dir(tmp_path)


def test_config_disagreeing_with_tokenizer_json_is_an_error(tmp_path):
    tiny_tokenizer().save(tmp_path)
    _write_config(tmp_path, {"<|im_end|>": (7, True)})
    with pytest.raises(ValueError, match="config says 7"):
        ChatTokenizer.from_dir(tmp_path)


def test_missing_everything_is_added_and_logged(tmp_path, caplog):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["plain text only"] * 10, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    with caplog.at_level(logging.WARNING):
        tk = ChatTokenizer.from_dir(tmp_path)
    assert "<IMG_CONTEXT>" in caplog.text
    for t in SPECIAL_TOKENS:
        assert tk.encode_trusted(t) == [tk.token_id(t)]


def test_from_dir_without_files_fails(tmp_path):
    with pytest.raises(FileNotFoundError):
        ChatTokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("text", ["café 😀🎉 你好，世界！ naïve 👩‍👩‍👧 ok", "🙂" * 5 + "中文" * 3])
def test_stream_decode_equals_full_decode(text):
    tk = tiny_tokenizer()
    ids = tk.encode_text(text) + [tk.im_end_id]
    # The test only means something if some character is split across tokens.
    assert any("\ufffd" in tk.decode([i]) for i in ids)
    for skip in (True, False):
        sd = tk.stream_decoder(skip_special_tokens=skip)
        pieces = [sd.feed(i) for i in ids]
        assert "" in pieces
        assert "".join(pieces) + sd.flush() == tk.decode(ids, skip_special_tokens=skip)
        assert all("\ufffd" not in p for p in pieces)


def test_stream_decode_flushes_incomplete_tail():
    tk = tiny_tokenizer()
    ids = tk.encode_text("a😀")
    ids = ids[:-1]  # cut inside the emoji
    sd = tk.stream_decoder()
    text = sd.feed(ids)
    assert text + sd.flush() == tk.decode(ids)
    assert sd.flush() == ""


def test_train_tokenizer_is_fast_and_deterministic():
    texts = [f"Sample {i}: the quick brown fox jumps over {i % 17} lazy dogs." for i in range(3000)]
    t0 = time.perf_counter()
    a = train_tokenizer(texts, vocab_size=600)
    assert time.perf_counter() - t0 < 2.0
    b = train_tokenizer(texts, vocab_size=600)
    assert a._tok.get_vocab() == b._tok.get_vocab()
    assert a.vocab_size <= 600
    assert [a.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    with pytest.raises(ValueError):
        train_tokenizer(texts, vocab_size=100)


def test_tiny_tokenizer_is_cached_and_covers_any_text():
    assert tiny_tokenizer() is tiny_tokenizer()
    tk = tiny_tokenizer()
    text = "Ünïcödé ✓ \x00 tab\t"
    assert tk.decode(tk.encode_text(text)) == text


def test_matches_transformers_fast_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    tk = tiny_tokenizer()
    tk.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for s in SAMPLES + HOSTILE:
        assert hf(s, add_special_tokens=False).input_ids == tk.encode_trusted(s)


def test_decode_keeps_answer_markup_but_drops_structural_tokens():
    from internvl35.data.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = tok.encode_trusted("<|im_start|>assistant\n<ref>the button</ref><box>[[1, 2, 3, 4]]</box><|im_end|>")
    assert tok.decode(ids) == "assistant\n<ref>the button</ref><box>[[1, 2, 3, 4]]</box>"
    assert tok.decode(ids, skip_special_tokens=False).startswith("<|im_start|>")


def test_train_tokenizer_places_extra_special_tokens_after_the_internvl_ones():
    from internvl35.data.tokenizer import SPECIAL_TOKENS, train_tokenizer

    texts = ["the red circle is left of the blue square"] * 50
    tok = train_tokenizer(texts, vocab_size=400, extra_special=("<|a|>", "<|b|>"))
    ids = tok.added_token_ids
    assert [ids[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (ids["<|a|>"], ids["<|b|>"]) == (len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + 1)
    assert tok.vocab_size <= 400  # the special tokens count within the budget
    with pytest.raises(ValueError, match="16 special tokens"):
        train_tokenizer(texts, vocab_size=270, extra_special=("<|a|>", "<|b|>"))
