"""`LenVMCritic`: a frozen LenVM as a token-level length critic over TRL-layout batches.

The batch layout is TRL's GRPO layout: a left-padded prompt ``(B, P)`` followed by a right-padded
completion ``(B, T)``. The critic runs the LenVM once over ``prompt ⊕ completion`` and returns
completion-aligned tensors (docs/method.md#the-token-level-length-advantage)::

    values[:, t]   = V(s_t), the value *before* completion token t: read at the last prompt token
                     for t = 0, else at the token before t (a tool span included)
    final_values   = 0 if the completion ended with EOS, else V(s_T) at its last token (bootstrap)
    advantages, returns = core.length_gae(values, action_mask, final_values, gamma, lam)
    shaping        = core.potential_shaping(values, action_mask, final_values, gamma)
    lengths        = predicted remaining tokens, ln(1 + V) / ln(gamma), from the head logits

``action_mask`` (default ``completion_mask``) marks the tokens the policy generated. Tool or
environment output inside a multi-turn completion is context: it is attended to, but it is not a
time step (no length reward, no advantage). Every (B, T) field is 0 where ``action_mask`` is 0.

A vision-language policy's batch also carries the image inputs TRL's GRPO passes for image prompts
(``pixel_values``, ``image_grid_thw``, ``num_images``); a VL LenVM reads them with the ids
(:mod:`lenvm_rl.modeling.vision`).

All math is in :mod:`lenvm_rl.core`; the critic only lays out the batch and calls it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from lenvm_rl.core import length_gae, logits_to_length, potential_shaping, value_regression_loss
from lenvm_rl.data.prompts import prompt_mismatch
from lenvm_rl.modeling import LenVM
from lenvm_rl.modeling.vision import batch_vision_rows, is_vision_language, split_vision_rows
from lenvm_rl.modeling.vocabulary import check_vocabulary

__all__ = ["LenVMCritic", "LenVMCriticOutput", "completion_layout", "gather_states", "place_critic"]

logger = logging.getLogger(__name__)


@dataclass
class LenVMCriticOutput:
    """What :class:`LenVMCritic` returns; every (B, T) field is completion-aligned, float32, 0 off ``action_mask``.

    Attributes:
        values: (B, T) ``V(s_t)``, the state before completion token ``t``.
        final_values: (B,) 0 when terminated, else ``V(s_T)`` at the last completion token.
        advantages: (B, T) the length advantage ``A^len_t = sum_i (gamma lam)^i delta^len_{t+i}``.
        returns: (B, T) the length lambda-returns ``advantages + values``.
        shaping: (B, T) the potential-based shaping reward ``F_t = gamma V(s_{t+1}) - V(s_t)``.
        lengths: (B, T) predicted remaining tokens at ``s_t``.
        terminated: (B,) bool, whether each completion ended with EOS (given or inferred).
        hidden_states, final_hidden_states: (B, T, H) and (B, H), the trunk's states at ``s_t`` and
            ``s_T`` (only with ``return_hidden=True``; meaningless at padding positions).
    """

    values: Tensor
    final_values: Tensor
    advantages: Tensor
    returns: Tensor
    shaping: Tensor
    lengths: Tensor
    terminated: Tensor
    hidden_states: Tensor | None = None
    final_hidden_states: Tensor | None = None


class LenVMCritic:
    """A frozen LenVM that scores TRL-layout batches of completions.

    Args:
        lenvm: a :class:`~lenvm_rl.modeling.LenVM`, or a checkpoint directory / Hub id / short name
            for :meth:`LenVM.from_pretrained`.
        lam: the lambda of the length GAE (1.0: Monte-Carlo returns bootstrapped only at truncation).
        batch_size: rows scored per forward pass (bounds memory); each micro-batch is trimmed to its
            own real columns.
        device, dtype: where and in what precision the LenVM runs (default: as loaded). Inputs are
            moved there and outputs moved back to the inputs' device. A ``device`` given here *pins*
            the critic: the trainers leave it there (see :func:`place_critic`); without one, they move
            it to the accelerator's device.
        eos_token_id: id or ids that end a completion, overriding the LenVM config's and generation
            config's ``eos_token_id``. Used only to infer ``terminated`` when the call omits it.
        processing_class: the policy's tokenizer. When given, the LenVM's vocabulary is checked against
            it now (see :meth:`check_vocabulary`).
        trust_remote_code: passed to the loader for a checkpoint path.

    The LenVM is put in eval mode with ``requires_grad_(False)``; only :meth:`refit` ever updates it
    (its value head).
    """

    def __init__(
        self,
        lenvm: LenVM | str | os.PathLike,
        *,
        lam: float = 1.0,
        batch_size: int = 8,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        eos_token_id: int | Iterable[int] | None = None,
        processing_class=None,
        trust_remote_code: bool = False,
    ):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.name_or_path = None
        if not isinstance(lenvm, LenVM):
            if not isinstance(lenvm, (str, os.PathLike)):
                raise TypeError(f"lenvm must be a LenVM or a checkpoint path, got {type(lenvm).__name__}")
            self.name_or_path = str(lenvm)
            lenvm = LenVM.from_pretrained(lenvm, trust_remote_code=trust_remote_code)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if device is not None or dtype is not None:
            lenvm.to(device=device, dtype=dtype)
            lenvm.v_head.float()  # the head always runs in float32
        self.model = lenvm.eval().requires_grad_(False)
        self.pinned = device is not None
        self.lam = float(lam)
        self.batch_size = batch_size
        self.eos_token_ids = _eos_ids(lenvm, eos_token_id)
        self._format_warned = False
        if processing_class is not None:
            self.check_vocabulary(processing_class)

    @property
    def gamma(self) -> float:
        """The discount the LenVM models, and so of every return and advantage the critic gives."""
        return self.model.gamma

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_vocabulary(self, processing_class) -> None:
        """Raise ``ValueError`` unless the LenVM reads the policy's token ids as the same tokens.

        :func:`lenvm_rl.modeling.vocabulary.check_vocabulary`: the token-to-id maps, or the vocabulary hash the
        LenVM's checkpoint records, or the tokenizer saved beside it.
        """
        check_vocabulary(processing_class, self.model)

    def check_prompt_format(self, example: dict, processing_class=None, *, chat_template: str | None = None,
                            chat_template_kwargs: dict | None = None) -> None:
        """Warn once when the dataset's prompts (``example["prompt"]``, one row) are formatted unlike the LenVM's
        training prompts: raw text against chat messages (``trl.data_utils.is_conversational``), or another chat
        template (``processing_class``'s or ``chat_template``, with ``chat_template_kwargs``)."""
        if self._format_warned or "prompt" not in example:
            return
        try:
            why = prompt_mismatch(self.model, example["prompt"], processing_class, chat_template=chat_template,
                                  chat_template_kwargs=chat_template_kwargs)
        except TypeError:  # a prompt of neither format: TRL decides what it is, there is nothing to compare
            return
        if why:
            logger.warning(why)
            self._format_warned = True

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def __call__(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        terminated: Tensor | None = None,
        action_mask: Tensor | None = None,
        return_hidden: bool = False,
        *,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        num_images: list[int] | None = None,
    ) -> LenVMCriticOutput:
        """Score a batch. Prompt (B, P) left-padded, completion (B, T) right-padded; masks 0/1 or bool.

        ``terminated`` (B,) bool defaults to "the last real completion token is an EOS id".
        ``action_mask`` (B, T) defaults to ``completion_mask``; it must lie inside ``completion_mask``.
        ``return_hidden`` also returns the trunk's hidden states (see :meth:`hidden_states`), for a second
        head on the same forward. The LenVM runs on its own device; every output, the hidden states
        included, comes back on the device of ``completion_ids``.

        ``pixel_values``, ``image_grid_thw`` and ``num_images`` (images per row) are the image inputs of the batch
        as TRL's GRPO passes them for a VL policy (flat over the rows, see :mod:`lenvm_rl.modeling.vision`).
        """
        prompt_mask, completion_mask, action_mask, terminated = self._check_inputs(
            prompt_ids, prompt_mask, completion_ids, completion_mask, terminated, action_mask
        )
        images = self._image_rows(prompt_ids, prompt_mask, completion_ids, completion_mask,
                                  pixel_values=pixel_values, image_grid_thw=image_grid_thw, num_images=num_images)
        values, logits, final_values, hidden = [], [], [], []
        for rows in torch.arange(prompt_ids.shape[0]).split(self.batch_size):
            v, z, f, h = self._score_rows(prompt_ids[rows], prompt_mask[rows], completion_ids[rows],
                                          completion_mask[rows], return_hidden, images(rows))
            values.append(v)
            logits.append(z)
            final_values.append(f)
            hidden.append(h)
        out_device = completion_ids.device
        values = torch.cat(values).to(out_device)
        logits = torch.cat(logits).to(out_device)
        final_values = torch.where(terminated, 0.0, torch.cat(final_values).to(out_device))
        advantages, returns = length_gae(values, action_mask, final_values, self.gamma, self.lam)
        shaping = potential_shaping(values, action_mask, final_values, self.gamma)
        lengths = torch.where(action_mask, logits_to_length(logits, self.gamma), 0.0)
        return LenVMCriticOutput(
            values=torch.where(action_mask, values, 0.0),
            final_values=final_values,
            advantages=advantages,
            returns=returns,
            shaping=shaping,
            lengths=lengths,
            terminated=terminated,
            hidden_states=torch.cat([h[0] for h in hidden]).to(out_device) if return_hidden else None,
            final_hidden_states=torch.cat([h[1] for h in hidden]).to(out_device) if return_hidden else None,
        )

    def _check_inputs(self, prompt_ids, prompt_mask, completion_ids, completion_mask, terminated, action_mask):
        if prompt_ids.dim() != 2 or completion_ids.dim() != 2:
            raise ValueError(
                f"prompt_ids and completion_ids must be 2-D (B, P) and (B, T), got shapes "
                f"{tuple(prompt_ids.shape)} and {tuple(completion_ids.shape)}"
            )
        batch = prompt_ids.shape[0]
        expected = {
            "prompt_mask": (prompt_mask, tuple(prompt_ids.shape)),
            "completion_ids": (completion_ids, (batch, completion_ids.shape[1])),
            "completion_mask": (completion_mask, tuple(completion_ids.shape)),
        }
        if action_mask is not None:
            expected["action_mask"] = (action_mask, tuple(completion_ids.shape))
        if terminated is not None:
            expected["terminated"] = (terminated, (batch,))
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        prompt_mask, completion_mask = prompt_mask.bool(), completion_mask.bool()
        empty = ~prompt_mask.any(dim=1)
        if bool(empty.any()):
            raise ValueError(f"prompt_mask row {int(empty.nonzero()[0, 0])} is empty: s_0 needs a prompt token")
        action_mask = completion_mask if action_mask is None else action_mask.bool()
        if bool((action_mask & ~completion_mask).any()):
            raise ValueError("action_mask marks positions outside completion_mask; actions must be completion tokens")
        if terminated is None:
            terminated = self.infer_terminated(completion_ids, completion_mask)
        return prompt_mask, completion_mask, action_mask, terminated.bool().to(completion_ids.device)

    def infer_terminated(self, completion_ids: Tensor, completion_mask: Tensor) -> Tensor:
        """(B,) bool: the last real completion token is one of the EOS ids (False for an empty completion).

        Read from the tokens, never from ``ids != pad``: SmolLM2 pads with its EOS id.
        """
        mask = completion_mask.bool()
        last = (mask.long().cumsum(dim=1) * mask).argmax(dim=1)  # index of the last real token
        last_token = completion_ids.gather(1, last[:, None]).squeeze(1)
        eos = torch.as_tensor(self.eos_token_ids, device=completion_ids.device)
        return mask.any(dim=1) & torch.isin(last_token, eos)

    def _image_rows(self, prompt_ids, prompt_mask, completion_ids, completion_mask, pixel_values=None,
                    image_grid_thw=None, num_images=None) -> Callable[[Tensor], dict]:
        """A function from row indices to those rows' image inputs, on the LenVM's device (``{}`` for text)."""
        if pixel_values is None and image_grid_thw is None:
            return lambda rows: {}
        if not is_vision_language(self.model.config):
            raise ValueError(f"the batch has image inputs but the LenVM ({type(self.model._causal_lm).__name__}) is a "
                             "text model: score a vision-language policy with a vision-language LenVM")
        ids = torch.cat([prompt_ids.masked_fill(~prompt_mask.bool(), -1),
                         completion_ids.masked_fill(~completion_mask.bool(), -1)], dim=1)
        per_row = split_vision_rows(ids, self.model.config, pixel_values, image_grid_thw, num_images)
        return lambda rows: batch_vision_rows([per_row[i] for i in rows.tolist()], self.device)

    def _score_rows(self, prompt_ids, prompt_mask, completion_ids, completion_mask, return_hidden, images):
        input_ids, attention_mask, state_index, last_index = completion_layout(
            prompt_ids, prompt_mask, completion_ids, completion_mask, self.device
        )
        hidden, final_hidden = gather_states(self.model.trunk(input_ids, attention_mask, **images)[0], state_index,
                                             last_index)
        out = self.model.head(torch.cat([hidden, final_hidden[:, None]], dim=1),
                              torch.ones(hidden.shape[0], hidden.shape[1] + 1, dtype=torch.bool, device=hidden.device))
        values, final_values = out.values[:, :-1], out.values[:, -1]
        return values, out.logits[:, :-1], final_values, (hidden, final_hidden) if return_hidden else None

    def hidden_states(self, prompt_ids, prompt_mask, completion_ids, completion_mask, **images
                      ) -> tuple[Tensor, Tensor]:
        """The LenVM trunk's hidden states at the states ``s_t`` (B, T, H) and at ``s_T`` (B, H), no grad.

        Laid out like :attr:`LenVMCriticOutput.values`; entries at padding positions are meaningless. A
        second value head on the same (frozen) trunk reads these, so one forward serves both heads. They stay
        on the LenVM's device (:attr:`device`), where :meth:`refit` uses them. ``images``: the image inputs, as
        in :meth:`__call__`.
        """
        hidden, final_hidden = [], []
        image_rows = self._image_rows(prompt_ids, prompt_mask, completion_ids, completion_mask, **images)
        with torch.no_grad():
            for rows in torch.arange(prompt_ids.shape[0]).split(self.batch_size):
                input_ids, attention_mask, state_index, last_index = completion_layout(
                    prompt_ids[rows], prompt_mask[rows], completion_ids[rows], completion_mask[rows], self.device
                )
                h, f = gather_states(self.model.trunk(input_ids, attention_mask, **image_rows(rows))[0], state_index,
                                     last_index)
                hidden.append(h)
                final_hidden.append(f)
        return torch.cat(hidden), torch.cat(final_hidden)

    # ------------------------------------------------------------------ refit
    def refit(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        targets: Tensor,
        target_mask: Tensor,
        *,
        optimizer: torch.optim.Optimizer,
        steps: int,
        reduce_gradients: Callable[[Tensor], Tensor] | None = None,
        **images,
    ) -> list[float]:
        """Take ``steps`` optimizer steps on the value head towards ``targets`` at the states ``s_t``.

        The trunk runs once (no grad) and the head ``steps`` times on its fixed hidden states, so a refit
        costs one forward of the LenVM whatever ``steps`` is. The loss is
        :func:`lenvm_rl.core.value_regression_loss` (token-mean MSE over ``target_mask``), with ``targets``
        and ``target_mask`` (B, T) completion-aligned like :attr:`LenVMCriticOutput.values`.
        ``reduce_gradients`` (e.g. an all-reduce mean across processes) is applied to every head gradient
        before each step, so data-parallel copies of the head stay identical. ``images``: the image inputs, as in
        :meth:`__call__`. Returns the losses.
        """
        hidden, _ = self.hidden_states(prompt_ids, prompt_mask, completion_ids, completion_mask, **images)
        targets = targets.to(hidden.device)
        target_mask = target_mask.bool().to(hidden.device)
        head = self.model.v_head
        losses = []
        head.requires_grad_(True)
        try:
            for _ in range(steps):
                optimizer.zero_grad()
                loss = value_regression_loss(self.model.head(hidden, target_mask).values, targets, target_mask)
                loss.backward()
                if reduce_gradients is not None:
                    for param in head.parameters():
                        param.grad = reduce_gradients(param.grad)
                optimizer.step()
                losses.append(loss.item())
        finally:
            head.requires_grad_(False)
            optimizer.zero_grad(set_to_none=True)
        return losses


def place_critic(critic: LenVMCritic, device: torch.device | str) -> LenVMCritic:
    """The trainers' placement rule for a length critic they are given: move it to ``device`` unless it is pinned.

    ``device`` is the accelerator's (the policy's, ``cuda:<local rank>`` under DDP and ZeRO-3 alike). A critic
    built without ``device=`` moves there, whatever device its LenVM was on. One built with
    ``LenVMCritic(..., device=...)`` is pinned and stays put; it moves each batch to its own device and returns
    its outputs on the batch's device, so the trainer gets them on ``device`` either way.
    """
    if not critic.pinned:
        critic.model.to(device)
    return critic


def completion_layout(prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor,
                      device: torch.device | str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Concatenate a TRL-layout batch, trimmed to its real columns, on ``device``.

    Returns ``(input_ids, attention_mask, state_index, last_index)``: ``state_index`` (B, T) is the
    column of the token before each completion position (the state ``s_t``: the last prompt token
    for ``t = 0``), ``last_index`` (B,) the column of the last real token (the state ``s_T`` after
    the completion).
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.bool(), completion_mask.bool()], dim=1)
    columns = attention_mask.any(dim=0).nonzero().squeeze(1)
    first, end = int(columns[0]), int(columns[-1]) + 1
    input_ids, attention_mask = input_ids[:, first:end], attention_mask[:, first:end]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last_real = torch.where(attention_mask, positions, -1).cummax(dim=1).values  # last real column <= j
    before = torch.cat([last_real.new_full((last_real.shape[0], 1), -1), last_real[:, :-1]], dim=1)
    columns = torch.arange(completion_ids.shape[1], device=input_ids.device) + prompt_ids.shape[1] - first
    state_index = before.index_select(1, columns.clamp(max=input_ids.shape[1] - 1)).clamp(min=0)
    return (input_ids.to(device), attention_mask.long().to(device), state_index.to(device),
            last_real[:, -1].to(device))


def gather_states(hidden_states: Tensor, state_index: Tensor, last_index: Tensor) -> tuple[Tensor, Tensor]:
    """Hidden states (B, S, H) read at ``state_index`` (B, T) and ``last_index`` (B,): (B, T, H) and (B, H)."""
    width = hidden_states.shape[-1]
    hidden = hidden_states.gather(1, state_index[..., None].expand(-1, -1, width))
    final_hidden = hidden_states.gather(1, last_index[:, None, None].expand(-1, 1, width)).squeeze(1)
    return hidden, final_hidden


def _eos_ids(lenvm: LenVM, eos_token_id) -> list[int]:
    if eos_token_id is not None:
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    else:
        ids = []
        generation_config = getattr(lenvm._causal_lm, "generation_config", None)
        for source in (lenvm.config.get_text_config(), generation_config):  # a VL config: its text_config
            value = getattr(source, "eos_token_id", None)
            ids += [value] if isinstance(value, int) else list(value or [])
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(
            f"no usable EOS ids ({ids!r}): the LenVM's config records none; pass eos_token_id= to LenVMCritic"
        )
    return sorted(set(ids))
