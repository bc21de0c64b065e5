"""The length estimators of the length-aware trainers: one strategy per name, registered as verl registers its
advantage estimators (a dict and a decorator).

A trainer builds one :class:`RolloutBatch` per generation and asks the strategy of ``length_estimator`` (and, for
``"lenvm"``, ``length_mode``) for the length advantages: ``(B, T)`` per token or ``(B,)`` per completion, this
process's rows, or ``None`` for no length term. The math is all :mod:`lenvm_rl.core`; a strategy only picks the
core function and its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from lenvm_rl.core import discounted_returns, group_centered, group_length_advantages, kimi_length_rewards
from lenvm_rl.critics import LenVMCriticOutput

__all__ = ["LENGTH_ESTIMATORS", "LengthEstimator", "RolloutBatch", "get_length_estimator",
           "register_length_estimator"]


@dataclass
class RolloutBatch:
    """One generation, as the length term and the task advantage read it.

    ``B`` is this process's completions, ``N`` the gathered ones of every process (``N = B x processes``), ``T``
    the completion width. ``local`` is this process's slice of the ``N`` gathered rows.

    Attributes:
        mode: ``"train"`` or ``"eval"``.
        prompt_ids, prompt_mask: (B, P), left-padded, as TRL returns them.
        completion_ids, completion_mask: (B, T), right-padded, as TRL returns them.
        action_mask: (B, T) bool, the tokens the policy chose (``completion_mask``, times TRL's ``tool_mask``).
        terminated: (B,) bool, whether the completion ended with EOS (read from the generated ids).
        lengths: (B,) action lengths, as generated (also for rows that ``mask_truncated_completions`` masks).
        all_lengths: (N,) ``lengths`` of every process.
        task_rewards: (N,) the weighted sum of the reward functions of every process; NaN where every function
            returned None (unscorable).
        num_generations: completions per prompt (groups are consecutive rows).
        local: this process's rows of the gathered ``(N,)`` tensors.
        grpo_advantages: (B,) TRL's group-normalised task advantages.
        critic_out: the length critic on the completions, ``None`` without one.
        all_final_values: (N,) the critic's ``V(s_T)`` of every process, when the ``"group"`` twin bootstraps with
            it; else ``None``.
        old_per_token_logps, ref_per_token_logps: (B, T) TRL's sampling-policy and reference log-probs, or
            ``None`` where TRL skipped them.
        images: the image inputs of a VL policy's batch as TRL passes them (``pixel_values``, ``image_grid_thw``,
            ``num_images``); empty for text.
    """

    mode: str
    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    action_mask: Tensor
    terminated: Tensor
    lengths: Tensor
    all_lengths: Tensor
    task_rewards: Tensor
    num_generations: int
    local: slice
    grpo_advantages: Tensor | None = None
    critic_out: LenVMCriticOutput | None = None
    all_final_values: Tensor | None = None
    old_per_token_logps: Tensor | None = None
    ref_per_token_logps: Tensor | None = None
    images: dict = field(default_factory=dict)

    @property
    def unscorable(self) -> Tensor:
        """(N,) bool: completions that no reward function scored."""
        return self.task_rewards.isnan()

    @property
    def scores(self) -> Tensor:
        """(B,) this process's task rewards, 0 for an unscorable completion (its advantage is zeroed anyway)."""
        return self.task_rewards[self.local].nan_to_num(0.0)


class LengthEstimator:
    """Maps a :class:`RolloutBatch` to this process's length advantages: (B, T), (B,) or ``None`` (no term).

    Args:
        gamma: the discount of ``J_len`` (the trainer's resolved ``length_gamma``).
        correct_threshold: the task reward at or above which a completion counts as correct.
    """

    def __init__(self, gamma: float | None, correct_threshold: float):
        self.gamma = gamma
        self.correct_threshold = correct_threshold

    def __call__(self, batch: RolloutBatch) -> Tensor | None:
        raise NotImplementedError


LENGTH_ESTIMATORS: dict[str, type[LengthEstimator]] = {}
"""The registered length estimators by name: ``"lenvm"``, ``"lenvm_shaping"``, ``"group"``, ``"kimi"``, ``"none"``."""


def register_length_estimator(name: str) -> Callable[[type[LengthEstimator]], type[LengthEstimator]]:
    """Class decorator: register a :class:`LengthEstimator` under ``name`` (a name may be registered once)."""

    def decorator(cls: type[LengthEstimator]) -> type[LengthEstimator]:
        if name in LENGTH_ESTIMATORS and LENGTH_ESTIMATORS[name] is not cls:
            raise ValueError(f"length estimator {name!r} is already registered ({LENGTH_ESTIMATORS[name].__name__})")
        LENGTH_ESTIMATORS[name] = cls
        return cls

    return decorator


def get_length_estimator(estimator: str, mode: str = "advantage") -> type[LengthEstimator]:
    """The strategy of ``length_estimator=estimator`` and ``length_mode=mode`` (``"shaping"``: ``"lenvm_shaping"``)."""
    name = f"{estimator}_shaping" if mode == "shaping" else estimator
    if name not in LENGTH_ESTIMATORS:
        raise ValueError(f"no length estimator {name!r}; registered: {', '.join(map(repr, LENGTH_ESTIMATORS))}")
    return LENGTH_ESTIMATORS[name]


@register_length_estimator("lenvm")
class LenVMAdvantage(LengthEstimator):
    """Token level: the LenVM critic's length GAE ``A_len_t`` (:func:`~lenvm_rl.core.length_gae`), (B, T)."""

    def __call__(self, batch: RolloutBatch) -> Tensor:
        return batch.critic_out.advantages


@register_length_estimator("lenvm_shaping")
class LenVMShaping(LengthEstimator):
    """Token level: the return-to-go of the potential-based shaping rewards ``F_t``
    (:func:`~lenvm_rl.core.discounted_returns`), (B, T)."""

    def __call__(self, batch: RolloutBatch) -> Tensor:
        return discounted_returns(batch.critic_out.shaping, batch.action_mask, self.gamma)


@register_length_estimator("group")
class GroupTwin(LengthEstimator):
    """Sequence level: ``G - mean_group G`` (:func:`~lenvm_rl.core.group_length_advantages`), (B,); a cut completion
    is bootstrapped with ``batch.all_final_values`` when the trainer gathered them."""

    def __call__(self, batch: RolloutBatch) -> Tensor:
        return group_length_advantages(batch.all_lengths, self.gamma, batch.num_generations,
                                       batch.all_final_values)[batch.local]


@register_length_estimator("kimi")
class KimiGroupReward(LengthEstimator):
    """Sequence level: the Kimi k1.5 length reward (:func:`~lenvm_rl.core.kimi_length_rewards`), group-centred, (B,).
    An unscorable completion (NaN reward) counts as incorrect."""

    def __call__(self, batch: RolloutBatch) -> Tensor:
        correct = batch.task_rewards >= self.correct_threshold
        rewards = kimi_length_rewards(batch.all_lengths, correct, batch.num_generations)
        return group_centered(rewards, batch.num_generations)[batch.local]


@register_length_estimator("none")
class NoLengthTerm(LengthEstimator):
    """Plain GRPO (or PPO): no length advantage."""

    def __call__(self, batch: RolloutBatch) -> None:
        return None

