"""Held-out evaluation of value predictors on cached states, with the metrics of ``lenvm_rl.evaluation``.

A :class:`HeldOut` set pairs the rollout records of a held-out file with its cached features
(:mod:`lenvm_rl.analysis.features`) and scores values predicted at those states as ``evaluate_lenvm`` scores a
LenVM, without running the trunk again. A *cell* is the dict :meth:`HeldOut.evaluate_values` returns.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lenvm_rl.analysis.features import boundary_rows, concat_features, load_features, record_steps
from lenvm_rl.analysis.heads import head_values
from lenvm_rl.core import (
    length_to_value,
    mean_and_standard_error,
    positionwise_relative_error,
    value_regression_loss,
    value_to_length,
)

__all__ = ["HeldOut", "held_out_sets"]


class HeldOut:
    """One held-out set: its records, and its cached states for evaluating value predictors.

    ``features`` must hold the ``s_0`` of every record (``positions="boundary"``), or every state ``s_0 .. s_L``
    with ``all_positions`` (then value MSE and positionwise RE are measured too). Attributes: ``groups``
    (``group_by_prompt`` of the records), ``s0_hidden`` ``(prompts, H)`` (the ``s_0`` state of each prompt's lowest
    ``sample_index``, in the order of ``groups``) and, with ``all_positions``, ``hidden`` ``(M, H)`` and
    ``targets`` ``(M,)`` of every state of the EOS-terminated completions.
    """

    def __init__(self, name: str, records: list[dict], features: dict[str, torch.Tensor], all_positions: bool,
                 gamma: float):
        from lenvm_rl.data import group_by_prompt

        self.name, self.records, self.gamma = name, records, gamma
        self.groups = group_by_prompt(records)
        prompts, rows, _ = boundary_rows(features)
        if prompts.tolist() != list(self.groups):
            raise ValueError(f"{name}: the cached prompts differ from those of the rollout records; delete the cache")
        self.s0_hidden = features["hidden"][rows]
        # the EOS-terminated completions (their prompt's position in ``groups``, their length L) for the s_0 metrics
        ended = [(i, rec["completion_length"]) for i, group in enumerate(self.groups.values()) for rec in group
                 if rec["finish_reason"] == "eos"]
        self.ended_prompt = torch.tensor([i for i, _ in ended], dtype=torch.long)
        self.ended_length = torch.tensor([n for _, n in ended], dtype=torch.long)
        self.all_positions = all_positions
        if all_positions:  # value MSE and positionwise RE over the EOS-terminated completions, as evaluate_lenvm
            ended = features["terminated"]
            self.hidden, self.targets = features["hidden"][ended], features["targets"][ended]
            # the completion-aligned layout of those states: row -> (completion b, state t), and each L_b
            block, step = (part[ended] for part in record_steps(features))
            _, block, states = torch.unique(block, return_inverse=True, return_counts=True)
            self.state_block, self.state_step, self.state_length = block, step, states - 1  # s_0 .. s_L: L + 1

    def evaluate_values(self, s0_values: torch.Tensor, all_values: torch.Tensor | None = None) -> dict:
        """Prompt MRE ± SE from ``V(s_0)`` ``(prompts,)`` per prompt, and value MSE from values ``(M,)`` at every
        cached state.

        Also from ``V(s_0)`` alone, over the EOS-terminated completions (as ``evaluate_lenvm``'s value MSE and
        RE; a censored completion's target is unknown): ``s0_value_mse``, ``mean (V(s_0) - G_0)**2`` with
        ``G_0 = -(1 - gamma**L)``, and ``re_at_0``, ``evaluate_lenvm``'s positionwise RE at 0 % of the trajectory
        (``core.positionwise_relative_error`` at fraction 0). ``num_infinite`` counts prompts predicted at
        ``V(s_0) = -1`` (a saturated head): an infinite length, so an infinite MRE. ``prompt_errors`` lists the
        per-prompt relative errors.

        With values at every cached state (``all_positions``), ``positionwise_re`` is ``evaluate_lenvm``'s
        positionwise RE, ``{str(f): RE}`` for ``f`` in ``evaluation.FRACTIONS`` (0, 0.25, 0.5, 0.75), from
        ``V(s_k)`` of each EOS-terminated completion's own states (``k = floor(f * L)``); NaN otherwise.
        """
        from lenvm_rl.evaluation import prompt_errors_of_groups

        lengths = value_to_length(s0_values, self.gamma)
        prompt_errors = prompt_errors_of_groups(lengths, self.groups, self.gamma)
        mre, se = mean_and_standard_error(prompt_errors)
        mse, positionwise = self._all_state_metrics(all_values)
        s0_mse, re_at_0 = self._s0_metrics(s0_values)
        return {"prompt_mre": mre, "prompt_mre_se": se, "value_mse": mse, "s0_value_mse": s0_mse,
                "re_at_0": re_at_0, "positionwise_re": positionwise, "num_infinite": int(torch.isinf(lengths).sum()),
                "prompt_errors": prompt_errors.tolist()}

    def _all_state_metrics(self, all_values: torch.Tensor | None) -> tuple[float, dict[str, float]]:
        """Value MSE and positionwise RE (``{str(f): RE}``) of values ``(M,)`` at every cached EOS-terminated state;
        NaN without them."""
        from lenvm_rl.evaluation import FRACTIONS

        if all_values is None or not len(self.targets):
            return math.nan, dict.fromkeys(map(str, FRACTIONS), math.nan)
        mse = value_regression_loss(all_values[None], self.targets[None].float(),
                                    torch.ones(1, len(self.targets), dtype=torch.bool)).item()
        # completion-aligned V(s_t), t = 0 .. L-1 (every state but the EOS one), as evaluate_lenvm
        steps = self.state_step < self.state_length[self.state_block]
        block, step = self.state_block[steps], self.state_step[steps]
        values = torch.zeros(len(self.state_length), int(self.state_length.max()))
        mask = torch.zeros(values.shape, dtype=torch.bool)
        values[block, step], mask[block, step] = all_values.float()[steps], True
        errors = positionwise_relative_error(values, mask, FRACTIONS, gamma=self.gamma)
        return mse, dict(zip(map(str, FRACTIONS), errors.tolist()))

    def _s0_metrics(self, s0_values: torch.Tensor) -> tuple[float, float]:
        """Value MSE at ``s_0`` and RE at 0 % of ``V(s_0)`` ``(prompts,)`` over the EOS-terminated completions (each
        reads its prompt's ``V(s_0)``); NaN when none ended with EOS."""
        if not len(self.ended_length):
            return math.nan, math.nan
        v0 = s0_values.float()[self.ended_prompt]
        every = torch.ones(1, len(v0), dtype=torch.bool)
        s0_mse = value_regression_loss(v0[None], length_to_value(self.ended_length, self.gamma)[None], every).item()
        # completion-aligned values V(s_t) = V(s_0) for t < L: only the fraction-0 step is read
        steps = torch.arange(int(self.ended_length.max()))[None, :] < self.ended_length[:, None]
        re_at_0 = positionwise_relative_error(v0[:, None].expand(steps.shape), steps, (0.0,), gamma=self.gamma).item()
        return s0_mse, re_at_0

    def evaluate_head(self, head) -> dict:
        """:meth:`evaluate_values` of a ``ValueHead`` at the cached states."""
        return self.evaluate_values(head_values(head, self.s0_hidden),
                                    head_values(head, self.hidden) if self.all_positions else None)


def held_out_sets(eval_paths, eval_dirs, all_positions: bool, gamma: float) -> list[HeldOut]:
    """One ``HeldOut`` per held-out rollout file (its cached features in the folder of ``eval_dirs`` at the same
    place) and, with several files, one more named ``all held-out`` for their union."""
    from lenvm_rl.data import read_rollouts

    eval_parts = [load_features(d) for d in eval_dirs]
    sets = [HeldOut(Path(p).name, read_rollouts(p), part, all_positions, gamma)
            for p, part in zip(eval_paths, eval_parts)]
    if len(sets) > 1:
        sets.append(HeldOut("all held-out", read_rollouts(eval_paths), concat_features(eval_parts), all_positions,
                            gamma))
    return sets
