"""The LenVM architectures as vLLM pooling models: vLLM's own decoder plus the LenVM value head in float32.

``z_t = W2 · SiLU(W1 h_t + b1) + b2`` (:class:`lenvm_rl.modeling.ValueHead`, the same module as
:class:`~lenvm_rl.LenVM`'s) on the decoder's final hidden state ``h_t``. The pooler answers three tasks:

- ``token_classify``: ``z`` of every token, a (n, 1) float32 tensor per sequence;
- ``classify``: ``z`` of the last token, (1,) per sequence (vLLM's ``LAST`` pooling, which reads the prefix cache);
- ``token_embed``: the final hidden states ``h`` (n, H), not normalised: the features a value head is fit on.

No activation is applied: ``z`` is the raw head output, ``V = -sigmoid(z)``. Weights load from the reference
layout: the backbone from the checkpoint's safetensors (``model.*``; an untied ``lm_head`` is skipped) and the
head (``v_head.fc.*``, ``v_head.summary.*``) from ``value_head.safetensors``, read as a secondary source so a
sharded backbone (whose index does not list the head) loads too. A missing or incomplete head fails the load
with vLLM's list of the weights not initialised.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.pooler import DispatchPooler
from vllm.model_executor.layers.pooler.activations import PoolerIdentity
from vllm.model_executor.layers.pooler.seqwise import pooler_for_classify
from vllm.model_executor.layers.pooler.tokwise import (
    TokenEmbeddingPoolerHead,
    TokenPooler,
    get_tok_pooling_method,
    pooler_for_token_classify,
)
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.models.llama import LlamaModel
from vllm.model_executor.models.qwen2 import Qwen2Model
from vllm.model_executor.models.qwen3 import Qwen3Model
from vllm.model_executor.models.utils import AutoWeightsLoader, maybe_prefix
from vllm.sequence import IntermediateTensors

from lenvm_rl.modeling.lenvm import VALUE_HEAD_FILE, ValueHead

__all__ = ["LlamaForLengthValueModel", "Qwen2ForLengthValueModel", "Qwen3ForLengthValueModel"]

_HEAD_PREFIX = "v_head."


class _LenVMForPooling(nn.Module):
    """A vLLM decoder (``decoder_class``) under ``model.`` and the LenVM head under ``v_head.``."""

    is_pooling_model = True
    decoder_class: type[nn.Module]
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        model_config = vllm_config.model_config
        self.config = model_config.hf_config
        self.model = self.decoder_class(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.v_head = ValueHead(self.config.hidden_size).float()
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        # The head lives in its own file; the primary source skips it (a sharded backbone's index omits it anyway).
        self.secondary_weights = [DefaultModelLoader.Source(model_config.model, model_config.revision,
                                                            allow_patterns_overrides=[VALUE_HEAD_FILE])]
        pooler_config = model_config.pooler_config
        hidden_states = TokenEmbeddingPoolerHead(head_dtype=torch.float32, projector=None, activation=None)
        self.pooler = DispatchPooler({
            "token_classify": pooler_for_token_classify(pooler_config, classifier=self.logits, act_fn=PoolerIdentity()),
            "classify": pooler_for_classify(pooler_config, classifier=self.logits, act_fn=PoolerIdentity()),
            "token_embed": TokenPooler(get_tok_pooling_method(pooler_config.get_tok_pooling_type()), hidden_states),
        })

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``z`` (..., 1) float32 of hidden states (..., H): the value head, with vLLM's label dimension."""
        return self.v_head(hidden_states).unsqueeze(-1)

    @staticmethod
    def is_unused_checkpoint_weight(name: str) -> bool:
        return name.startswith(_HEAD_PREFIX)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder's final hidden states (tokens, H); the pooler applies the head."""
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self, ignore_unexpected_prefixes=["lm_head."])
        return loader.load_weights(weights)


class LlamaForLengthValueModel(_LenVMForPooling):
    decoder_class = LlamaModel
    hf_to_vllm_mapper = LlamaModel.hf_to_vllm_mapper


class Qwen2ForLengthValueModel(_LenVMForPooling):
    decoder_class = Qwen2Model
    hf_to_vllm_mapper = Qwen2Model.hf_to_vllm_mapper


class Qwen3ForLengthValueModel(_LenVMForPooling):
    decoder_class = Qwen3Model
    hf_to_vllm_mapper = Qwen3Model.hf_to_vllm_mapper
