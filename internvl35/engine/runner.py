"""Builds batched model inputs, runs the model and samples. Never touches a queue: it is handed sequences.

Prefill packs the admitted prompts into one row (T = sum of prompt lengths), attends within each prompt,
writes every token's keys/values into its slot, and computes logits only at each prompt's last token. A
prompt that continues a finished request (the prefix cache) has that request's keys/values copied into its
slot and runs only the rest, as a row of its own. Prompts admitted together that are the same (tokens and
images: the samples of one RL group) run once, and the others copy its keys/values and logits. Images
already seen come from the image cache.
Decode runs every running sequence as one row of a (n, 1) batch over the dense cache prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from internvl35.engine.image_cache import ImageFeatureCache, pixels_digest
from internvl35.engine.kv_cache import SlotKVCache
from internvl35.engine.prefix_cache import PrefixCache, last_image_position, reusable_length
from internvl35.engine.sampling import sample
from internvl35.engine.sequence import Sequence
from internvl35.model.attention import AttentionInput, segmented_input
from internvl35.model.internvl import ImageFeatures, InternVLModel
from internvl35.model.linear import weights_version


class ModelRunner:
    def __init__(self, model: InternVLModel, max_slots: int, max_seq_len: int, device: torch.device,
                 image_cache_bytes: int = 0, prefix_cache_bytes: int = 0) -> None:
        self.model, self.device = model, device
        self.image_cache = ImageFeatureCache(image_cache_bytes) if image_cache_bytes else None
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes else None
        t = model.config.text
        dtype = model.language_model.model.embed_tokens.weight.dtype
        self.cache = SlotKVCache(t.num_hidden_layers, max_slots, t.num_key_value_heads, max_seq_len, t.head_dim,
                                 dtype, device)
        self.arange = torch.arange(max_seq_len, device=device)

    def _tensor(self, values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    # ---- prefill ---------------------------------------------------------------------------------------

    def encode_images(self, seqs: list[Sequence]) -> None:
        """Turn pixel tiles into ImageFeatures, once per distinct image set: the admitted requests' new tiles in
        one ViT call; tiles seen before (in this batch or, with the image cache, an earlier one) reuse theirs."""
        todo = [s for s in seqs if s.pixel_values is not None and s.image_features is None]
        if not todo:
            return
        version = self._encoder_version() if self.image_cache is not None else None
        groups: dict[object, list[Sequence]] = {}  # requests with the same tiles share one encoding
        for i, seq in enumerate(todo):
            key = self.image_cache.key(seq.pixel_values, version, seq.image_digest) if version is not None else i
            groups.setdefault(key, []).append(seq)
        cached = {key: self.image_cache.get(key) for key in groups} if version is not None else {}
        new = [key for key in groups if cached.get(key) is None]
        if new:
            pixels = [groups[key][0].pixel_values for key in new]
            feats = self.model.encode_images(torch.cat(pixels).to(self.device))
            for key, part in zip(new, feats.split([p.shape[0] for p in pixels])):
                cached[key] = part
                if version is not None:
                    self.image_cache.put(key, part)
        for key, group in groups.items():
            for seq in group:
                seq.image_features, seq.pixel_values = cached[key], None

    def image_digest(self, pixels: Tensor | None) -> bytes | None:
        """The digest of a request's tiles when a cache will look them up; None without pixels or caches."""
        if pixels is None or (self.image_cache is None and self.prefix_cache is None):
            return None
        return pixels_digest(pixels)

    def share_key(self, seq: Sequence) -> tuple | None:
        """What the prompt's keys/values depend on, when tokens and image digest say it all (`_prefix_keyable`).
        None with the prefix cache off: that one switch turns off all reuse of keys/values across requests (and
        the timing it would show a shared server's users)."""
        if self.prefix_cache is None or not self._prefix_keyable(seq):
            return None
        return tuple(seq.prompt_ids), seq.image_digest

    def _encoder_version(self) -> tuple | None:
        """The version of everything that turns pixels into features: the parameters outside the language model,
        listed afresh each time (a replaced module is a change too; ~100 parameters, microseconds)."""
        return weights_version(p for name, p in self.model.named_parameters() if not name.startswith("language_model."))

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence], running: list[Sequence] | None = None) -> Tensor:
        """Run the prompts of newly admitted sequences; return logits at each last prompt token (n, V).

        A prompt that starts with keys/values computed before, by a finished request (`prefix_cache`) or by one
        still running (`running`: its slot holds its prompt and output so far), gets them copied into its slot
        and runs only the rest, one row each; the others run packed in one row. Same prompts admitted together
        run once and are copied."""
        self.encode_images(seqs)
        version = self._kv_version(seqs)
        new = {s.id for s in seqs}
        for seq in seqs:
            seq.kv_version = version if self._prefix_keyable(seq) else None
        leaders: dict[tuple, Sequence] = {}  # the first of each group of same prompts runs; the others copy it
        run: list[Sequence] = []
        copies: list[tuple[Sequence, Sequence]] = []
        for seq in seqs:
            lead = seq if seq.share_key is None else leaders.setdefault(seq.share_key, seq)
            if lead is seq:
                run.append(seq)
            else:
                copies.append((seq, lead))
        sources = [s for s in running or [] if s.id not in new and s.kv_version is not None and s.kv_version == version]
        reuse = self._prefix_hits(run, version, sources)
        packed = [s for s in run if s.id not in reuse]
        logits = dict(zip((s.id for s in packed), self._prefill_packed(packed))) if packed else {}
        for seq in run:
            if seq.id in reuse:
                logits[seq.id] = self._prefill_suffix(seq, *reuse[seq.id])
        for seq, lead in copies:
            self.cache.move(lead.slot, seq.slot, seq.num_prompt_tokens)
            logits[seq.id] = logits[lead.id]
        return torch.stack([logits[s.id] for s in seqs])

    def _kv_version(self, seqs: list[Sequence]) -> tuple | None:
        """The weights' version, when keys/values computed now may be reused later (prefix cache on, and a prompt
        whose tokens and images say what they are); None otherwise, without listing the parameters."""
        if self.prefix_cache is None or not any(map(self._prefix_keyable, seqs)):
            return None
        return weights_version(self.model.parameters())

    def _prefix_hits(self, seqs: list[Sequence], version: tuple | None,
                     running: list[Sequence]) -> dict[int, tuple[int, Tensor | int]]:
        """seq id -> (m, where positions 0..m-1 come from: a prefix-cache block or a running sequence's slot)."""
        if version is None or (not self.prefix_cache and not running):
            return {}
        image_id = self.model.config.image_token_id
        # What each running slot holds: all but the sequence's newest token.
        held = [(o.slot, o.image_digest, (o.prompt_ids + o.output_ids)[: o.num_tokens - 1]) for o in running]
        hits: dict[int, tuple[int, Tensor | int]] = {}
        for seq in filter(self._prefix_keyable, seqs):
            hit = self.prefix_cache.match(seq.prompt_ids, seq.image_digest, version, image_id) if self.prefix_cache \
                else None
            last_image = last_image_position(seq.prompt_ids, image_id)
            for slot, digest, ids in held:
                m = reusable_length(ids, digest, seq.prompt_ids, seq.image_digest, last_image)
                if m > (hit[0] if hit else 0):
                    hit = (m, slot)
            if hit is not None:
                hits[seq.id] = hit
        return hits

    def _prefix_keyable(self, seq: Sequence) -> bool:
        """Whether tokens + image digest say everything the prompt's keys/values depend on: not for image
        features handed in ready-made (a vision server's), whose <IMG_CONTEXT> tokens could stand for anything."""
        return seq.image_digest is not None or self.model.config.image_token_id not in seq.prompt_ids

    def _prefill_suffix(self, seq: Sequence, start: int, source: Tensor | int) -> Tensor:
        """The prompt past a reused prefix of `start` tokens (a kept block, or a running sequence's slot), attending
        to it: logits at the last token (V,)."""
        if isinstance(source, int):
            self.cache.move(source, seq.slot, start)
        else:
            self.cache.write(seq.slot, source)
        n = seq.num_prompt_tokens
        positions = self.arange[start:n][None]  # (1, T)
        mask = (self.arange[:n][None] <= positions[0][:, None])[None, None]  # (1, 1, T, n)
        attn = AttentionInput(positions=positions, mask=mask, cache=self.cache.suffix(seq.slot, start, n - start))
        ids = self._tensor(seq.prompt_ids[start:])[None]
        out = self.model(ids, attn=attn, logits_at=self._tensor([n - start - 1])[None])
        return out.logits[0, 0]

    def _prefill_packed(self, seqs: list[Sequence]) -> Tensor:
        lens = [s.num_prompt_tokens for s in seqs]
        ids = self._tensor([t for s in seqs for t in s.prompt_ids])[None]  # (1, T)
        if len(seqs) == 1:
            attn = AttentionInput(positions=self.arange[: lens[0]][None])  # plain causal: the fast kernel
        else:
            attn = segmented_input(lens, self.device)
        slots = self._tensor([s.slot for s, n in zip(seqs, lens) for _ in range(n)])
        attn.cache = self.cache.prefill(slots, attn.positions[0])
        parts = [s.image_features for s in seqs if s.image_features is not None]
        images = ImageFeatures.concat(parts, self.device) if parts else None
        ends = torch.tensor(lens, device=self.device).cumsum(0) - 1
        out = self.model(ids, image_features=images, attn=attn, logits_at=ends[None])
        return out.logits[0]

    # ---- decode ----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> Tensor:
        """One token for every running sequence (seqs[i] in slot i); return next-token logits (n, V)."""
        ids = self._tensor([s.last_token for s in seqs])[:, None]  # (n, 1)
        pos_list = [s.num_tokens - 1 for s in seqs]
        pos = self._tensor(pos_list)
        L = max(pos_list) + 1
        # Rows of equal length need no mask: every cached position is theirs.
        mask = None if min(pos_list) == L - 1 else (self.arange[:L][None] <= pos[:, None])[:, None, None]
        attn = AttentionInput(positions=pos[:, None], mask=mask, cache=self.cache.decode(pos, L))
        # The model's own steps, minus `embed`: decoded tokens are never <IMG_CONTEXT> (`sample` masks
        # it), so the plain embedding lookup is exact and skips `embed`'s host-side count of image
        # tokens, a device sync per step on a GPU.
        language_model = self.model.language_model
        hidden, _ = language_model.model(language_model.model.embed_tokens(ids), attn)
        return language_model.logits(hidden[:, -1])

    # ---- sampling and cache moves ----------------------------------------------------------------------

    @torch.inference_mode()
    def sample(self, seqs: list[Sequence], logits: Tensor) -> list[int]:
        # <IMG_CONTEXT> is a placeholder only the prompt builder may place: a generated one would be fed
        # back without features and desynchronise the image-token count, so it is never sampled.
        image_id = self.model.config.image_token_id
        if image_id is not None:
            logits[:, image_id] = float("-inf")
        return sample(logits, [s.params for s in seqs], [s.generator for s in seqs])

    def keep_prefixes(self, finished: list[Sequence]) -> None:
        """Copy finished sequences' keys/values into the prefix cache (before their slots are reused)."""
        if self.prefix_cache is None:
            return
        kv = self.cache.kv
        per_token = kv[:, :, 0, :, 0].numel() * kv.element_size()
        # The cache holds all but the newest token of each.
        kept = [seq for seq in finished if seq.slot is not None and seq.finish_reason != "abort"
                and self._prefix_keyable(seq)
                and self.prefix_cache.wants(seq.num_tokens - 1, (seq.num_tokens - 1) * per_token)]
        # Listing every parameter for the version costs ~ms on a large MoE: only when something is to be kept.
        version = weights_version(self.model.parameters()) if kept else None
        if version is None:
            return
        for seq in kept:
            n = seq.num_tokens - 1
            ids = (seq.prompt_ids + seq.output_ids)[:n]
            self.prefix_cache.save(ids, seq.image_digest, version, self.cache.read(seq.slot, n))

    def move(self, moves: list[tuple[int, int, int]]) -> None:
        for src, dst, length in moves:
            self.cache.move(src, dst, length)
