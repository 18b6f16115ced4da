"""The `internvl2_5` chat template: the one place that knows the prompt format (SYSTEM.md 3).

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n

Each `<image>` placeholder in a user turn becomes `<img>` + `<IMG_CONTEXT>` x N + `</img>`,
N the sum of that image's per-tile token counts (256 per 448 px tile, 64 for a tile that ViR
sends through the 0.25 pixel shuffle).

How text becomes ids, and why:
- Template parts (`<|im_start|>`, `<|im_end|>`, image tokens) are inserted as ids, never parsed.
- Message text is encoded with `ChatTokenizer.encode_text`: a typed "<IMG_CONTEXT>" or
  "<|im_end|>" stays plain text. The markup tokens (`<ref>`, `<box>`, `<quad>`, `<think>` and
  their closers) are let through by default, because the released models read and write them as
  single tokens: grounding prompts contain `<ref>`, thinking answers and even the thinking system
  prompt contain `<think>` (`allow_markup=False` turns that off).
- Each turn is encoded as one string "{role}\\n{content}" between `<|im_start|>` and `<|im_end|>`,
  like InternVL's `preprocess_internvl2_5` and its `chat()`, so ids match the reference.
- Labels follow `preprocess_internvl2_5`: -100 for system and user turns, for
  `<|im_start|>assistant\\n` and for the `\\n` after `<|im_end|>`; the answer and its `<|im_end|>`
  are supervised. Labels are aligned with input_ids (the loss shifts them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from internvl35.data.tokenizer import (
    IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START, MARKUP_TOKENS, THINK_END, THINK_START, ChatTokenizer,
)

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")

# `system_message` of the `internvl2_5` template in OpenGVLab/InternVL,
# internvl_chat/internvl/conversation.py (also lmdeploy's InternVL2_5 `meta_instruction`).
DEFAULT_SYSTEM_PROMPT = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

# `R1_SYSTEM_PROMPT` ("Thinking System Prompt") of the InternVL3.5 model cards
# (huggingface.co/OpenGVLab/InternVL3_5-8B, "Thinking Mode"; the vLLM InternVL3.5 recipe repeats it).
THINKING_SYSTEM_PROMPT = """
You are an AI assistant that rigorously follows this response protocol:

1. First, conduct a detailed analysis of the question. Consider different angles, potential solutions, and reason through the problem step-by-step. Enclose this entire thinking process within <think> and </think> tags.

2. After the thinking section, provide a clear, concise, and direct answer to the user's question. Separate the answer from the think section with a newline.

Ensure that the thinking process is thorough but remains focused on the query. The final answer should be standalone and not reference the thinking section.
""".strip()  # noqa: E501


@dataclass(frozen=True)
class Message:
    """One turn. Images are the `<image>` placeholders in `content` (user turns only)."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if self.role != "user" and IMAGE_PLACEHOLDER in self.content:
            raise ValueError(f"{IMAGE_PLACEHOLDER} placeholders belong in user turns, found one in a {self.role} turn")

    @property
    def images(self) -> int:
        return self.content.count(IMAGE_PLACEHOLDER)


@dataclass(frozen=True)
class TokenizedPrompt:
    """What the model side takes: ids, optional labels, and the `<IMG_CONTEXT>` count per image."""

    input_ids: list[int]
    labels: list[int] | None
    image_token_counts: list[int]

    @property
    def num_image_tokens(self) -> int:
        return sum(self.image_token_counts)


def add_image_placeholders(question: str, num_images: int = 0, video_frames: int = 0) -> str:
    """Prefix `question` with the InternVL placeholder convention (SYSTEM.md 2).

    One image: `<image>\\n{q}`; n images: `Image-1: <image>\\nImage-2: <image>\\n{q}`;
    video: `Frame1: <image>\\nFrame2: <image>\\n{q}`. A question that already holds exactly as many
    placeholders is kept as written; any other count is a ValueError.
    """
    if num_images < 0 or video_frames < 0:
        raise ValueError("num_images and video_frames must be >= 0")
    if num_images and video_frames:
        raise ValueError("give either num_images or video_frames, not both")
    n, found = num_images or video_frames, question.count(IMAGE_PLACEHOLDER)
    if found == n:
        return question
    if found:
        raise ValueError(f"question has {found} {IMAGE_PLACEHOLDER} placeholder(s) but {n} image(s)/frame(s) "
                         "were given; write all of them or none")
    if video_frames:
        prefix = "".join(f"Frame{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, n + 1))
    elif n == 1:
        prefix = f"{IMAGE_PLACEHOLDER}\n"
    else:
        prefix = "".join(f"Image-{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, n + 1))
    return prefix + question


def build_messages(
    question: str,
    num_images: int = 0,
    history: Sequence[Message | tuple[str, str]] = (),
    system: str | None = None,
    thinking: bool = False,
    video_frames: int = 0,
) -> list[Message]:
    """System turn, earlier (user, assistant) turns, then the new question with its placeholders.

    `system=None` picks DEFAULT_SYSTEM_PROMPT, or THINKING_SYSTEM_PROMPT when `thinking`
    (thinking mode is only that system prompt). `system=""` keeps an empty system turn, as the
    reference template does. `history` placeholders count as images of earlier turns.
    """
    if thinking and system is not None:
        raise ValueError("thinking=True selects THINKING_SYSTEM_PROMPT; pass either system or thinking")
    if system is None:
        system = THINKING_SYSTEM_PROMPT if thinking else DEFAULT_SYSTEM_PROMPT
    messages = [Message("system", system)]
    for item in history:
        if not isinstance(item, Message) and not (isinstance(item, (tuple, list)) and len(item) == 2
                                                  and all(isinstance(t, str) for t in item)):
            raise ValueError(f"a history item must be a Message or a (question, answer) pair of strings, got {item!r:.80}")
        turns = [item] if isinstance(item, Message) else [Message("user", item[0]), Message("assistant", item[1])]
        if any(m.role == "system" for m in turns):
            raise ValueError("history holds user/assistant turns; the system prompt is the `system` argument")
        messages += turns
    messages.append(Message("user", add_image_placeholders(question, num_images, video_frames)))
    return messages


def _turns(messages: Sequence[Message], add_generation_prompt: bool) -> Iterator[tuple[str, str, bool]]:
    """(role, content, closed) per turn; the generation prompt is an open assistant turn."""
    for i, m in enumerate(messages):
        if m.role == "system" and i:
            raise ValueError("a system message may only come first")
        yield m.role, m.content, True
    if add_generation_prompt:
        yield "assistant", "", False


def render_conversation(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The prompt as text, `<image>` placeholders unexpanded (for logs, docs and tests)."""
    return "".join(f"{IM_START}{role}\n{content}" + (f"{IM_END}\n" if closed else "")
                   for role, content, closed in _turns(messages, add_generation_prompt))


def image_token_string(num_tokens: int) -> str:
    """What one `<image>` expands to, as text: `<img><IMG_CONTEXT>...</img>`."""
    return IMG_START + IMG_CONTEXT * num_tokens + IMG_END


def _image_totals(image_tokens: Sequence[Sequence[int]] | Sequence[int]) -> list[int]:
    """Per image: an int (its total), or its per-tile counts (summed, so tiles may differ)."""
    totals = []
    for i, item in enumerate(image_tokens):
        tiles = [item] if isinstance(item, int) else list(item)
        if not tiles or any(not isinstance(t, int) or t <= 0 for t in tiles):
            raise ValueError(f"image {i}: token counts must be positive ints, got {item!r}")
        totals.append(sum(tiles))
    return totals


def _encode_turn(tok: ChatTokenizer, role: str, content: str, closed: bool,
                 totals: Iterator[int], allow: tuple[str, ...]) -> tuple[list[int], list[bool]]:
    """Ids of one turn and which of them are supervised."""
    ids = [tok.im_start_id]
    for i, piece in enumerate(f"{role}\n{content}".split(IMAGE_PLACEHOLDER)):
        if i:
            ids += [tok.img_start_id] + [tok.img_context_id] * next(totals) + [tok.img_end_id]
        ids += tok.encode_text(piece, allow=allow)
    if not closed:
        return ids, [False] * len(ids)
    ids.append(tok.im_end_id)
    supervised = [False] * len(ids)
    if role == "assistant":
        # Skip `<|im_start|>assistant\n` as preprocess_internvl2_5 does: by its token count.
        start = 1 + len(tok.encode_text(f"{role}\n"))
        supervised[start:] = [True] * (len(ids) - start)
    newline = tok.encode_text("\n")  # after <|im_end|>: never generated, never supervised
    return ids + newline, supervised + [False] * len(newline)


def tokenize_conversation(
    tokenizer: ChatTokenizer,
    messages: Sequence[Message],
    image_tokens: Sequence[Sequence[int]] | Sequence[int] = (),
    add_generation_prompt: bool = False,
    with_labels: bool = False,
    allow_markup: bool = True,
) -> TokenizedPrompt:
    """Render and encode a conversation; expand each `<image>` to its `<IMG_CONTEXT>` run.

    `image_tokens` has one entry per placeholder, in order of appearance: an int, or a list of
    per-tile counts (e.g. [256, 256, 64, 256] under ViR). A placeholder count that differs from
    len(image_tokens) is a ValueError. With `add_generation_prompt` the ids end with
    `<|im_start|>assistant\\n` (in thinking mode too: the model writes `<think>` itself).
    """
    totals = _image_totals(image_tokens)
    found = sum(m.images for m in messages)
    if found != len(totals):
        raise ValueError(f"conversation has {found} {IMAGE_PLACEHOLDER} placeholder(s) "
                         f"but image_tokens describes {len(totals)} image(s)")
    allow = MARKUP_TOKENS if allow_markup else ()
    it = iter(totals)
    input_ids: list[int] = []
    supervised: list[bool] = []
    for role, content, closed in _turns(messages, add_generation_prompt):
        ids, sup = _encode_turn(tokenizer, role, content, closed, it, allow)
        input_ids += ids
        supervised += sup
    labels = [t if s else IGNORE_INDEX for t, s in zip(input_ids, supervised)] if with_labels else None
    return TokenizedPrompt(input_ids, labels, totals)


def split_thinking(text: str) -> tuple[str | None, str]:
    """(reasoning, final answer) of a model output; reasoning is None without thinking tags.

    The reasoning ends at the first `</think>` (a missing opening `<think>` is tolerated); an
    unclosed `<think>` (a truncated generation) is all reasoning and no answer.
    """
    head, sep, tail = text.partition(THINK_END)
    if not sep:
        before, opened, after = text.partition(THINK_START)
        return (after.strip(), "") if opened else (None, text.strip())
    reasoning = head.strip()
    if reasoning.startswith(THINK_START):
        reasoning = reasoning[len(THINK_START):].strip()
    return reasoning, tail.strip()


def is_well_formed_thinking(text: str) -> bool:
    """Exactly one `<think>...</think>` pair, nothing but whitespace before it, a non-empty answer after."""
    if text.count(THINK_START) != 1 or text.count(THINK_END) != 1:
        return False
    before, _, rest = text.partition(THINK_START)
    _, closed, answer = rest.partition(THINK_END)
    return not before.strip() and bool(closed) and bool(answer.strip())
