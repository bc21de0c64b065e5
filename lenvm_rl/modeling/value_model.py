"""`TaskValueModel`: PPO's task critic, ``V(s_t) = score(h(s_t))``, a linear head on a causal-LM trunk.

Three ways to build it, trading cost against capacity (``PPOConfig.task_critic``):

- ``"head"``: no trunk of its own. It reads the hidden states of a frozen LenVM's trunk, so one
  forward gives the length head and the task head; only ``score`` trains. Cheapest; the task values
  can only use what the length-trained trunk already encodes.
- ``"lora"``: a LoRA adapter on the LenVM's backbone. The task head reads the backbone with the
  adapter on, the frozen length head with it off (two forwards of one set of weights).
- ``"separate"``: a full copy of a causal LM (by default the policy), fully trained. Most capacity,
  a second model's memory and compute; the LenVM, if any, only gives the length critic.

Values are completion-aligned like :class:`~lenvm_rl.LenVMCriticOutput`: ``values[:, t]`` is read at
the token before completion token ``t``, ``final_values`` at the last completion token.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedModel

from lenvm_rl.modeling.lenvm import _is_peft_model, load_backbone, run_trunk

__all__ = ["TASK_CRITIC_CONFIG", "TaskValueModel"]

TASK_CRITIC_CONFIG = "task_critic.json"
SCORE_FILE = "score.safetensors"


class TaskValueModel(nn.Module):
    """A linear value head ``score`` (float32) on an optional causal-LM ``backbone`` (plain or PEFT-wrapped).

    Args:
        backbone: the trunk it trains, or ``None`` to read hidden states it is given (``"head"`` mode).
        hidden_size: the trunk's hidden size.

    The head starts at zero, so every value starts at 0 (no initial bias on the advantages).
    """

    def __init__(self, backbone: PreTrainedModel | nn.Module | None, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.score = nn.Linear(hidden_size, 1).float()
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    @property
    def mode(self) -> str:
        if self.backbone is None:
            return "head"
        return "lora" if _is_peft_model(self.backbone) else "separate"

    @classmethod
    def from_model(cls, model: PreTrainedModel) -> "TaskValueModel":
        """A critic with its own trunk: a deep copy of ``model`` (a causal LM, e.g. the policy), fully trainable."""
        backbone = copy.deepcopy(model)
        if _is_peft_model(backbone):  # the policy's weights as they are now, adapter merged in
            backbone = backbone.merge_and_unload()
        backbone.requires_grad_(True)
        lm_head = backbone.get_output_embeddings()
        if lm_head is not None and lm_head.weight is not backbone.get_input_embeddings().weight:
            lm_head.requires_grad_(False)  # never runs
        return cls(backbone, backbone.config.hidden_size)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The trunk's final hidden states (B, S, H); needs a ``backbone``."""
        if self.backbone is None:
            raise ValueError("this TaskValueModel has no backbone ('head' mode): pass the LenVM's hidden states")
        return run_trunk(self.backbone, input_ids, attention_mask)[0]

    def forward(self, hidden_states: Tensor) -> Tensor:
        """``score(h)``: hidden states (..., H) to values (...), in float32."""
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            return self.score(hidden_states.float()).squeeze(-1)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Write ``task_critic.json``, ``score.safetensors`` and the trunk (the adapter only in LoRA mode)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        score = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k.startswith("score.")}
        save_file(score, directory / SCORE_FILE, metadata={"format": "pt"})
        hidden_size = self.score.in_features
        (directory / TASK_CRITIC_CONFIG).write_text(json.dumps({"mode": self.mode, "hidden_size": hidden_size}) + "\n")
        if self.backbone is not None:
            self.backbone.save_pretrained(directory / "backbone")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, lenvm=None, trust_remote_code: bool = False
                        ) -> "TaskValueModel":
        """Load what :meth:`save_pretrained` wrote. ``"head"`` and ``"lora"`` critics need the ``lenvm`` they sit on."""
        directory = Path(directory)
        config_file = directory / TASK_CRITIC_CONFIG
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: {directory} is not a saved TaskValueModel")
        config = json.loads(config_file.read_text())
        mode = config.get("mode")
        if mode in ("head", "lora") and lenvm is None:
            raise ValueError(f"{directory} holds a {mode!r} task critic, which sits on a LenVM: pass lenvm=")
        if mode == "head":
            backbone = None
        elif mode == "lora":
            from peft import PeftModel

            backbone = PeftModel.from_pretrained(lenvm.backbone, directory / "backbone", is_trainable=True)
        elif mode == "separate":
            backbone = load_backbone(directory / "backbone", trust_remote_code=trust_remote_code)
        else:
            raise ValueError(f"{config_file}: unknown mode {mode!r}; expected 'head', 'lora' or 'separate'")
        model = cls(backbone, int(config["hidden_size"]))
        score = load_file(directory / SCORE_FILE)
        expected = {f"score.{k}" for k in model.score.state_dict()}
        if set(score) != expected:
            raise ValueError(f"{directory / SCORE_FILE} has keys {sorted(score)}, expected {sorted(expected)}")
        model.score.load_state_dict({k.removeprefix("score."): v for k, v in score.items()})
        return model
