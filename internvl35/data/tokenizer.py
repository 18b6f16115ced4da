"""Tokenizer of the chat format: a thin wrapper over a `tokenizers.Tokenizer`.

Two encoders, on purpose:
- `encode_trusted` is for template text written by this library: `<|im_start|>`, `<img>`, ...
  in it become their special ids.
- `encode_text` is for text that came from a user or a dataset: it never yields an added-token
  id (SYSTEM.md 1.4: a typed "<IMG_CONTEXT>" would otherwise desynchronise image features and
  text). It runs a clone of the tokenizer without added tokens, so the string is cut into plain
  BPE pieces, and a post-check raises if an added id still slipped through. Callers may let the
  content-markup tokens through (`allow=MARKUP_TOKENS`: grounding tags and `<think>`), never the
  structural ones.

Vocabulary layout follows Qwen3 + InternVL: byte-level BPE with the Qwen2 split regex; the
InternVL tokens are added tokens. In the real Qwen3 tokenizer `<think>`/`</think>` are added
tokens that are *not* special (decode keeps them); we keep whatever flag a loaded file says and
mirror Qwen3 in the tokenizers we train.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

log = logging.getLogger(__name__)

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
THINK_START, THINK_END = "<think>", "</think>"

# Order matters: train_tokenizer gives these ids 0..13 in this order.
SPECIAL_TOKENS: tuple[str, ...] = (
    IM_START, IM_END, ENDOFTEXT, IMG_START, IMG_END, IMG_CONTEXT,
    "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", THINK_START, THINK_END,
)
# Qwen3 registers these as added tokens with "special": false.
NON_SPECIAL_TOKENS: frozenset[str] = frozenset({THINK_START, THINK_END})
# Tokens that delimit turns or image features: never produced from text, whatever the caller allows.
STRUCTURAL_TOKENS: frozenset[str] = frozenset({IM_START, IM_END, ENDOFTEXT, IMG_START, IMG_END, IMG_CONTEXT})
# Content markup (grounding tags, reasoning tags): a caller may let these through `encode_text`.
MARKUP_TOKENS: tuple[str, ...] = tuple(t for t in SPECIAL_TOKENS if t not in STRUCTURAL_TOKENS)

# Qwen2/Qwen3 pre-tokenizer split pattern (from their tokenizer.json).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level_bpe(model: models.BPE) -> Tokenizer:
    """A Qwen2-style byte-level BPE tokenizer around `model` (NFC, split regex, ByteLevel)."""
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _as_added_token(entry: str | dict, special: bool) -> AddedToken:
    if isinstance(entry, str):
        return AddedToken(entry, special=special, normalized=False)
    return AddedToken(
        entry["content"], single_word=entry.get("single_word", False), lstrip=entry.get("lstrip", False),
        rstrip=entry.get("rstrip", False), normalized=entry.get("normalized", False),
        special=entry.get("special", special),
    )


def _config_added_tokens(path: Path) -> list[tuple[int | None, AddedToken]]:
    """Added tokens declared in tokenizer_config.json / special_tokens_map.json, with ids if given."""
    out: list[tuple[int | None, AddedToken]] = []
    cfg_file, map_file = path / "tokenizer_config.json", path / "special_tokens_map.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    smap = json.loads(map_file.read_text()) if map_file.exists() else {}
    decoder = cfg.get("added_tokens_decoder", {})
    for idx in sorted(decoder, key=int):
        out.append((int(idx), _as_added_token(decoder[idx], special=True)))
    for src in (cfg, smap):
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens"):
            entries = src.get(key) or []
            for entry in entries if isinstance(entries, list) else [entries]:
                out.append((None, _as_added_token(entry, special=True)))
    return out


def _add_tokens(tok: Tokenizer, wanted: Iterable[tuple[int | None, AddedToken]]) -> list[str]:
    """Register the tokens that are not added tokens yet; an id that comes out different is an error.

    `tokenizers` assigns ids itself (the next free one, or the model-vocab id of the same string),
    so an explicit id can only be checked, not imposed.
    """
    present = {t.content for t in tok.get_added_tokens_decoder().values()}
    added = []
    for want_id, token in wanted:
        if token.content in present:
            got = tok.token_to_id(token.content)
            if want_id is not None and got != want_id:
                raise ValueError(f"token {token.content!r} has id {got}, the config says {want_id}")
            continue
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
        got = tok.token_to_id(token.content)
        if want_id is not None and got != want_id:
            raise ValueError(f"added token {token.content!r} got id {got}, the config says {want_id}")
        present.add(token.content)
        added.append(token.content)
    return added


def _without_added_tokens(tok: Tokenizer) -> Tokenizer:
    """A clone that knows no added tokens: a typed "<|im_end|>" is then plain BPE pieces."""
    data = json.loads(tok.to_str())
    data["added_tokens"] = []
    data["post_processor"] = None
    return Tokenizer.from_str(json.dumps(data))


def check_utf8(text: str, what: str = "the text") -> None:
    """Text must be encodable as UTF-8: a lone surrogate (how Python passes on undecodable bytes of a command line
    or a file read with errors="surrogateescape") would otherwise fail deep in the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid UTF-8 (an undecodable byte or lone surrogate at character "
                         f"{e.start + 1}): {text[max(0, e.start - 20):e.start + 20]!r}") from None


class ChatTokenizer:
    """The project's tokenizer: ids of the InternVL tokens, safe and trusted encoders, decoding."""

    def __init__(self, tokenizer: Tokenizer):
        """Wrap (and own) `tokenizer`; InternVL tokens it lacks are added to it, with a warning."""
        missing = [(None, AddedToken(t, special=t not in NON_SPECIAL_TOKENS, normalized=False))
                   for t in SPECIAL_TOKENS]
        added = _add_tokens(tokenizer, missing)
        if added:
            log.warning("tokenizer lacked InternVL token(s) %s; added them with ids %s "
                        "(the model's embedding table must cover these ids)",
                        added, [tokenizer.token_to_id(t) for t in added])
        self._tok = tokenizer
        self._plain = _without_added_tokens(tokenizer)
        self._added = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items()}
        self._added_ids = frozenset(self._added.values())
        self._hidden_ids = self._added_ids - {self._added[t] for t in MARKUP_TOKENS if t in self._added}
        self._ids = {t: self._added[t] for t in SPECIAL_TOKENS}

    @classmethod
    def from_dir(cls, path: str | Path) -> ChatTokenizer:
        """`_from_dir`, with a malformed file reported as a ValueError that names the directory."""
        try:
            return cls._from_dir(path)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError, KeyError) as e:
            raise ValueError(f"{path}: the tokenizer files cannot be read: {e!r}") from e
        except Exception as e:  # the tokenizers library raises plain Exception for a malformed tokenizer.json
            if type(e) is not Exception:
                raise
            raise ValueError(f"{path}/tokenizer.json cannot be read: {e}") from e

    @classmethod
    def _from_dir(cls, path: str | Path) -> ChatTokenizer:
        """Load `tokenizer.json`, or `vocab.json` + `merges.txt` (Qwen2-style byte-level BPE), then add
        the tokens that `tokenizer_config.json` / `special_tokens_map.json` declare."""
        path = Path(path)
        if (path / "tokenizer.json").exists():
            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.json").exists() and (path / "merges.txt").exists():
            tok = _byte_level_bpe(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
        else:
            raise FileNotFoundError(f"{path}: neither tokenizer.json nor vocab.json + merges.txt")
        _add_tokens(tok, _config_added_tokens(path))
        return cls(tok)

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` (everything needed to reload) into directory `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path / "tokenizer.json"))
        return path / "tokenizer.json"

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def im_start_id(self) -> int:
        return self._ids[IM_START]

    @property
    def im_end_id(self) -> int:
        return self._ids[IM_END]

    @property
    def img_start_id(self) -> int:
        return self._ids[IMG_START]

    @property
    def img_end_id(self) -> int:
        return self._ids[IMG_END]

    @property
    def img_context_id(self) -> int:
        return self._ids[IMG_CONTEXT]

    @property
    def eos_id(self) -> int:
        """Generation stops at `<|im_end|>` (SYSTEM.md 3), so that is the end-of-sequence id."""
        return self._ids[IM_END]

    @property
    def pad_id(self) -> int:
        """`<|endoftext|>`, Qwen's pad token; padded positions are masked anyway."""
        return self._ids[ENDOFTEXT]

    @property
    def added_token_ids(self) -> dict[str, int]:
        """Every added token (InternVL ones and whatever the file brought) by content."""
        return dict(self._added)

    def token_id(self, token: str) -> int:
        """Id of an added token such as `<ref>`; KeyError if the tokenizer has no such token."""
        return self._added[token]

    def encode_trusted(self, text: str) -> list[int]:
        """Encode template text: special-token strings in it become their ids. Never user text."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str, allow: Collection[str] = ()) -> list[int]:
        """Encode untrusted text: no added-token id comes out, except the markup tokens in `allow`.

        Structural tokens (turn and image delimiters) cannot be allowed. The result is checked:
        an added id that is not allowed raises RuntimeError (it would be a bug, not bad input).
        """
        bad = STRUCTURAL_TOKENS.intersection(allow)
        if bad:
            raise ValueError(f"structural tokens can never come from text: {sorted(bad)}")
        check_utf8(text)
        allowed = {t: self._added[t] for t in allow if t in self._added}
        if allowed:
            pattern = "(" + "|".join(re.escape(t) for t in sorted(allowed, key=len, reverse=True)) + ")"
            ids: list[int] = []
            for piece in re.split(pattern, text):
                if piece in allowed:
                    ids.append(allowed[piece])
                elif piece:
                    ids.extend(self._plain.encode(piece, add_special_tokens=False).ids)
        else:
            ids = self._plain.encode(text, add_special_tokens=False).ids
        leaked = [i for i in ids if i in self._added_ids and i not in allowed.values()]
        if leaked:
            raise RuntimeError(f"added-token ids {leaked[:8]} leaked out of untrusted text {text[:80]!r}")
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Ids to text. By default added tokens are dropped except the answer markup (`<ref>`, `<box>`,
        `<quad>`, `<think>` and their closings): a grounding answer keeps its `<ref>...</ref><box>...</box>`."""
        ids = list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._hidden_ids]
        return self._tok.decode(ids, skip_special_tokens=False)

    def stream_decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens)


class StreamDecoder:
    """Incremental detokeniser: `feed` ids as they are generated, get the newly completed text.

    A character split across tokens (multi-byte UTF-8: emoji, CJK) is held back until its last
    byte arrives, so the pieces concatenate to exactly `decode(all ids)`. Text is emitted whenever
    the pending ids decode to something that does not end in U+FFFD; at that point the bytes seen
    end on a character boundary, so decoding the rest separately cannot change what was emitted.
    """

    def __init__(self, tokenizer: ChatTokenizer, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._pending: list[int] = []

    def feed(self, ids: int | Iterable[int]) -> str:
        """Add one id or several; return the text they complete (possibly "")."""
        self._pending.extend([ids] if isinstance(ids, int) else ids)
        text = self._tok.decode(self._pending, skip_special_tokens=self._skip)
        if text.endswith("\ufffd"):
            return ""
        self._pending.clear()
        return text

    def flush(self) -> str:
        """End of stream: whatever is pending, incomplete characters decoded as U+FFFD."""
        text = self._tok.decode(self._pending, skip_special_tokens=self._skip) if self._pending else ""
        self._pending.clear()
        return text


def train_tokenizer(texts: Iterable[str], vocab_size: int, extra_special: Sequence[str] = ()) -> ChatTokenizer:
    """Train a Qwen2-style byte-level BPE on `texts` for the project's small models.

    All 256 bytes are in the alphabet (any text encodes); SPECIAL_TOKENS take ids 0..13 in order, then
    `extra_special` (a model's own added tokens, e.g. words for what covers an image token); all of them are
    special except `<think>`/`</think>`, as in Qwen3, so none comes out of untrusted text. Takes well under a
    second for a few thousand short texts.
    """
    specials = [*SPECIAL_TOKENS, *extra_special]
    floor = 256 + len(specials)
    if vocab_size < floor:
        raise ValueError(f"vocab_size {vocab_size} < {floor} (256 bytes + {len(specials)} special tokens)")
    tok = _byte_level_bpe(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    data = json.loads(tok.to_str())
    for entry in data["added_tokens"]:
        entry["special"] = entry["content"] not in NON_SPECIAL_TOKENS
    return ChatTokenizer(Tokenizer.from_str(json.dumps(data)))


def _tiny_corpus() -> list[str]:
    """A fixed English/digit corpus: chat words, image prompts, numbers, simple sentences."""
    subjects = ["the cat", "a dog", "the red car", "two birds", "my friend", "the image", "this photo",
                "a small boat", "the green bottle", "a yellow bus", "the old man", "four children"]
    verbs = ["sees", "has", "shows", "is near", "looks at", "contains", "is behind", "moves to",
             "is left of", "is right of", "stands on", "points at"]
    objects = ["a tree", "the house", "three apples", "a blue sky", "the river", "a person", "the table",
               "some text", "a white window", "the black chair", "a large building", "the street sign"]
    chat = ["user", "assistant", "system", "Image-1:", "Image-2:", "Frame1:", "Frame2:", "Describe the image.",
            "What is in the picture?", "The answer is", "Let me think step by step.", "Please answer briefly.",
            "Hello, who are you?", "Yes.", "No.", "I am an AI assistant.", "How many objects are there?",
            "Which option is correct?", "Answer with the letter.", "Please provide the bounding box."]
    out = []
    for i, s in enumerate(subjects):
        for j, v in enumerate(verbs):
            for k, o in enumerate(objects):
                n = (i * 144 + j * 12 + k) * 37 % 1000
                out.append(f"{s.capitalize()} {v} {o}. {chat[(i + j + k) % len(chat)]} {n}, {n + 1}.")
    out += [f"{a} + {b} = {a + b}" for a in range(0, 100, 7) for b in range(0, 100, 11)]
    return out + chat


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> ChatTokenizer:
    """A 512-token tokenizer for tests, trained once per process. Shared: do not mutate it."""
    return train_tokenizer(_tiny_corpus(), vocab_size=512)
