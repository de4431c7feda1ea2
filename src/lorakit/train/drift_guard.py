"""The drift guard: regularisers that keep an adapter from changing what the base does where the task is silent.

Two terms, both against the base computed by the same model inside ``lk.disabled`` (no second copy):

(a) **General text** (:class:`DriftGuard`, a training callback). Each step adds
    ``w · mean_t KL(p_base(·|x_<t) ‖ p_adapted(·|x_<t))`` over every position ``t`` of a few general-text
    sequences. The base's distributions are computed once, before the first step, and kept as the top-``k``
    token ids with their log-probabilities plus the log of the remaining mass, per position: ``8k + 4`` bytes
    instead of ``4·V`` (k = 64, V = 49,152: 516 bytes instead of 196 KB), because a language model's next-token
    mass sits on few tokens. The KL is then taken between the two distributions coarsened to those ``k + 1``
    buckets: a lower bound of the full KL (data-processing inequality), equal to it when the tail is empty,
    and exactly 0 while the adapter is the identity (``B = 0``). The cache is written to the run directory
    (:mod:`lorakit.train.guard_cache`), so a resumed run reads it instead of generating again.
(b) **The training batch itself** (:func:`non_target_kl`, used by :class:`GuardedTokenLoss`). At each labelled
    position the target token is removed from both distributions, the rest renormalised, and
    ``KL(base ‖ adapted)`` over those non-target tokens added with weight ``batch_weight``: the task may raise
    its target token, but not reshuffle everything else. It needs no extra data and costs one reference forward.

Both are logged beside the task loss (``drift_kl``, ``batch_kl``) in ``metrics.jsonl``, the progress line and
``loss.png``. Related methods: Hinton et al. 2015 (distillation from top logits), and the KL-to-reference
penalties of RLHF (Ouyang et al. 2022).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lorakit.core.errors import DataError
from lorakit.core.model import disabled
from lorakit.data.collate import collate
from lorakit.data.encode import IGNORE, Encoded
from lorakit.data.load import RowSet, load_rows
from lorakit.train import guard_cache
from lorakit.train.callbacks import Callback
from lorakit.train.loss import CHUNK, TokenLoss, linear_cross_entropy
from lorakit.train.objective_config import DriftGuardSection

if TYPE_CHECKING:
    from lorakit.train.trainer import Trainer

GENERAL = "general"


def shipped_guard_prompts() -> Path:
    """The general chat prompts that ship for the guard (none of them is in the eval's drift set)."""
    return Path(str(resources.files("lorakit").joinpath("resources/train/guard_prompts.jsonl")))


# -- the KL of one chunk of positions ----------------------------------------------------------------------
def _logits(states: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """(n, V) fp32 logits from hidden states (n, H) and a head (V, H), or from logits already (``weight`` None)."""
    if weight is None:
        return states.float()
    device = states.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else states.dtype
    with torch.autocast(device, enabled=False):
        return (states.to(dtype) @ weight.to(dtype).T).float()  # (n, H) @ (H, V) -> (n, V)


def _bucketed(z: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of tokens ``ids`` (n, k) and of all other tokens together (n,), from logits ``z`` (n, V)."""
    norm = torch.logsumexp(z, dim=-1)  # (n,)
    top = z.gather(1, ids) - norm[:, None]  # (n, k)
    tail = torch.logsumexp(z.scatter(1, ids, float("-inf")), dim=-1) - norm  # (n,)
    return top, tail


def base_top_k(
    states: torch.Tensor, weight: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the cache keeps per position: top-``k`` ids (n, k), their log-probabilities (n, k), the tail's (n,)."""
    z = _logits(states, weight)
    ids = z.topk(min(k, z.shape[-1]), dim=-1).indices  # (n, k)
    top, tail = _bucketed(z, ids)
    return ids, top, tail


def _chunk_kl(states, weight, ids, base_top, base_tail) -> torch.Tensor:
    top, tail = _bucketed(_logits(states, weight), ids)
    kl = (base_top.exp() * (base_top - top)).sum(-1)  # (n,)
    rest = torch.where(base_tail > float("-inf"), base_tail.exp() * (base_tail - tail), torch.zeros_like(tail))
    return (kl + rest).sum()


def bucketed_kl(
    states: torch.Tensor,
    weight: torch.Tensor | None,
    ids: torch.Tensor,
    base_top: torch.Tensor,
    base_tail: torch.Tensor,
) -> torch.Tensor:
    """Σ over positions of KL(base ‖ adapted) on the ``k + 1`` buckets; states (n, H) (or logits (n, V)).

    Chunks of positions are recomputed in backward (checkpointed), so no (n, V) tensor outlives its chunk.
    """
    total = states.new_zeros((), dtype=torch.float32)
    for start in range(0, len(states), CHUNK):
        part = slice(start, start + CHUNK)
        args = (states[part], weight, ids[part], base_top[part], base_tail[part])
        total = total + (
            checkpoint(_chunk_kl, *args, use_reentrant=False) if states.requires_grad else _chunk_kl(*args)
        )
    return total


def _chunk_non_target_kl(states, base_states, weight, targets) -> torch.Tensor:
    rows = torch.arange(len(targets), device=targets.device)
    adapted, base = _logits(states, weight), _logits(base_states, weight)
    adapted[rows, targets] = float("-inf")
    base[rows, targets] = float("-inf")
    adapted, base = adapted.log_softmax(-1), base.log_softmax(-1)  # (n, V): the other tokens, renormalised
    p = base.exp()
    return torch.where(p > 0, p * (base - adapted), torch.zeros_like(p)).sum()


def non_target_kl(
    states: torch.Tensor, base_states: torch.Tensor, weight: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """Σ over positions of KL(base ‖ adapted) of the distributions without the target token, renormalised.

    ``states``/``base_states``: (N, H) hidden states (or (N, V) logits with ``weight`` None) at the labelled
    positions; ``targets`` (N,). Chunked and checkpointed like :func:`bucketed_kl`.
    """
    total = states.new_zeros((), dtype=torch.float32)
    for start in range(0, len(states), CHUNK):
        part = slice(start, start + CHUNK)
        args = (states[part], base_states[part], weight, targets[part])
        total = total + (
            checkpoint(_chunk_non_target_kl, *args, use_reentrant=False)
            if states.requires_grad
            else _chunk_non_target_kl(*args)
        )
    return total


def position_states(tokens: TokenLoss, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """``(states (B, T, ·), head weight or None)``: last hidden states and the frozen head when the loss can
    apply the head itself (see :class:`TokenLoss`), else the model's logits."""
    model = tokens.model
    if tokens.fused:
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return hidden, model.get_output_embeddings().weight
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits, None


# -- (b) the SFT objective with the batch regulariser ------------------------------------------------------
class GuardedTokenLoss(TokenLoss):
    """``forward(batch) -> (Σ CE + batch_weight · Σ non-target KL, stats)`` over the batch's labelled tokens."""

    def __init__(self, model: nn.Module, batch_weight: float) -> None:
        super().__init__(model)
        self.batch_weight = batch_weight
        self.scale = 1.0
        """Set by the trainer each step from the guard's schedule."""

    def forward(self, input_ids, attention_mask, labels):
        targets = labels[:, 1:]  # (B, T-1)
        mask = targets != IGNORE
        states, weight = position_states(self, input_ids, attention_mask)
        with torch.no_grad(), disabled(self.model):
            base_states, _ = position_states(self, input_ids, attention_mask)
        selected, base_selected = states[:, :-1][mask], base_states[:, :-1][mask]  # (N, ·): labelled positions
        if weight is not None:
            ce = linear_cross_entropy(selected, weight, targets[mask])
        else:
            ce = nn.functional.cross_entropy(selected.float(), targets[mask], reduction="sum")
        kl = non_target_kl(selected, base_selected, weight, targets[mask])
        return ce + self.batch_weight * self.scale * kl, {"task_loss": ce.detach(), "batch_kl": kl.detach()}


# -- (a) general text, cached base top-k ------------------------------------------------------------------
class DriftGuard(Callback):
    """Adds ``weight · KL(base ‖ adapted)`` on general text to every step's loss (term (a) of this module).

    Guard batch ``s mod n`` is used at step ``s``; under DDP process ``r`` takes rows ``r, r + W, ...`` of it and
    scales its sum so that the gradient DDP averages equals the single-process mean over the whole batch. The
    base's distributions are kept in ``<output>/drift_guard_base.safetensors`` (:mod:`lorakit.train.guard_cache`),
    so a resumed run reads them instead of generating the base's answers again.
    Raises :class:`DataError` (``file:line``) for a guard file row without ``prompt``, ``messages`` or ``text``.
    """

    term_name = "drift_kl"

    def __init__(self, section: DriftGuardSection) -> None:
        self.section = section
        self.term_value = 0.0
        self.cache_reused = False
        """Whether the last :meth:`on_train_begin` read the base's distributions from the run directory."""

    def on_train_begin(self, trainer: "Trainer") -> None:
        self.tokens = TokenLoss(trainer.model)
        rows = load_rows(guard_source(self.section))
        key = guard_cache.cache_key(
            trainer.model, trainer.tokenizer, self.section, rows.sha256 or "", trainer.precision
        )
        path = trainer.output / guard_cache.CACHE_FILE
        batches = guard_cache.read(path, key)
        self.cache_reused = batches is not None
        if batches is None:
            batches = self._build(trainer, rows)
            if trainer.dist.main:
                guard_cache.write(path, key, batches)
        rank, world = trainer.dist.rank, trainer.dist.world
        self.batches: list[tuple[guard_cache.GuardBatch | None, int]] = []
        for batch in batches:
            mine = batch.share(rank, world)
            self.batches.append(
                (mine.to(trainer.device) if mine is not None else None, int(batch.attention_mask.sum()))
            )

    @torch.no_grad()
    def _build(self, trainer: "Trainer", rows) -> list[guard_cache.GuardBatch]:
        from lorakit.train import precision

        was_training = trainer.model.training
        trainer.model.eval()
        with precision.autocast(trainer.precision, trainer.device.type):
            sequences = guard_sequences(trainer.model, trainer.tokenizer, self.section, rows)
        size = self.section.batch_size
        built = []
        for start in range(0, len(sequences), size):
            examples = [sequences[(start + j) % len(sequences)] for j in range(size)]
            tensors = collate(examples, trainer.pad_id)
            ids, mask = tensors["input_ids"].to(trainer.device), tensors["attention_mask"].to(trainer.device)
            with disabled(trainer.model), precision.autocast(trainer.precision, trainer.device.type):
                states, weight = position_states(self.tokens, ids, mask)
                top_ids, top, tail = base_top_k(states[mask.bool()], weight, self.section.top_k)
            built.append(guard_cache.GuardBatch(ids, mask, top_ids, top, tail))
        trainer.model.train(was_training)
        return built

    def loss_term(self, trainer: "Trainer") -> torch.Tensor | None:
        scale = trainer_scale(self.section, trainer)
        part, total = self.batches[trainer.state.step % len(self.batches)]
        if part is None or self.section.weight == 0:
            self.term_value = 0.0
            return None
        states, weight = position_states(self.tokens, part.input_ids, part.attention_mask)
        kl = bucketed_kl(states[part.attention_mask.bool()], weight, part.ids, part.top, part.tail)
        self.term_value = float(kl.detach()) / total
        return kl * (self.section.weight * scale * trainer.dist.world / total)


def guard_source(section: DriftGuardSection) -> str | Path:
    """The guard's general-text file: the shipped prompts for ``data: general``, else the user's path."""
    return shipped_guard_prompts() if section.data == GENERAL else section.data


def trainer_scale(section: DriftGuardSection, trainer: "Trainer") -> float:
    """The schedule's factor at the current step: 1, or ``step / max_steps`` rising linearly."""
    if section.schedule == "constant":
        return 1.0
    return (trainer.state.step + 1) / trainer.config.train.max_steps


def guard_sequences(
    model: nn.Module, tokenizer, section: DriftGuardSection, rows: RowSet | None = None
) -> list[Encoded]:
    """Token sequences of the guard's general text (``rows``, read from ``section.data`` when not given);
    ``prompt`` rows get the base's greedy answer appended."""
    rows = rows if rows is not None else load_rows(guard_source(section))
    texts: list[tuple[str, bool] | None] = []  # (text, whether the tokenizer adds its special tokens)
    prompts: list[tuple[int, list[dict]]] = []
    for i, row in enumerate(rows.rows):
        if "messages" in row.data and isinstance(row.data["messages"], list):
            texts.append((_render(tokenizer, row.data["messages"], row.where), False))
        elif isinstance(row.data.get("prompt"), str):
            texts.append(None)
            prompts.append((i, [{"role": "user", "content": row.data["prompt"]}]))
        elif isinstance(row.data.get("text"), str) and row.data["text"].strip():
            texts.append((row.data["text"], True))
        else:
            raise DataError(
                f"{row.where}: a drift-guard row needs 'prompt' (a string), 'messages' (a chat) or "
                f"'text' (non-empty); the row has {', '.join(sorted(map(str, row.data))) or 'no keys'}"
            )
    if prompts:
        answers = _base_answers(model, tokenizer, [p for _, p in prompts], section.respond_tokens)
        for (i, messages), answer in zip(prompts, answers):
            full = messages + [{"role": "assistant", "content": answer}] if answer else messages
            texts[i] = (_render(tokenizer, full, rows.rows[i].where, generation_prompt=not answer), False)
    out = []
    for text, special in texts:
        ids = tokenizer(text, add_special_tokens=special)["input_ids"][: section.max_length]
        out.append(Encoded(ids, [IGNORE] * len(ids)))
    return out


def _render(tokenizer, messages: list[dict], where: str, generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: chat rows need a tokenizer with a chat template; use {{'text': ...}} rows")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _base_answers(model: nn.Module, tokenizer, prompts: list[list[dict]], tokens: int) -> list[str]:
    if tokens == 0:
        return [""] * len(prompts)
    from lorakit.eval.generate import generate

    with disabled(model):
        return [a.strip() for a in generate(model, tokenizer, prompts, max_new_tokens=tokens)]
