"""Offline LenVM scoring through vLLM: :class:`VLLMLenVM`, and the engine arguments shared with the server.

:class:`VLLMLenVM` is a :class:`~lenvm_rl.LenVM` whose weights live in a vLLM engine instead of this process:
the module itself holds only the checkpoint's config, on the ``meta`` device, so everything that reads a LenVM's
records (``gamma``, the prompt format, the vocabulary checks) works as for a loaded one, while
:meth:`VLLMLenVM.score` (the head output ``z`` of every token, as :meth:`LenVM.score`) and
:meth:`VLLMLenVM.hidden_states` (the trunk's final states, for value-head fits on cached features) run the
sequences through a vLLM engine with the plugin's pooling tasks (``token_classify``, ``token_embed``). vLLM packs
sequences of any lengths without padding and schedules them itself.

>>> model = VLLMLenVM.from_pretrained("path/to/lenvm", dtype="float32", enforce_eager=True)  # doctest: +SKIP
>>> evaluate_lenvm(model, records)                                                           # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lenvm_rl.core import logits_to_value
from lenvm_rl.modeling.embedded import EMBEDDED_MODELS
from lenvm_rl.modeling.lenvm import VALUE_HEAD_FILE, LenVM, LenVMOutput, read_config_records
from lenvm_rl.vllm import ARCHITECTURES, require_vllm

__all__ = ["VLLMLenVM", "lenvm_engine_args"]


def lenvm_engine_args(model: str | os.PathLike, *, dtype: str | None = None, max_model_len: int | None = None,
                      enforce_eager: bool = False, gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1,
                      block_size: int | None = None, trust_remote_code: bool = False, **engine_kwargs) -> dict:
    """Keyword arguments of ``vllm.EngineArgs`` / ``AsyncEngineArgs`` for a LenVM checkpoint: the pooling runner,
    token ids in (no tokenizer in the engine), and the ``--vllm_*`` options of ``lenvm-rl serve``; ``dtype=None`` is
    vLLM's ``"auto"``. ``engine_kwargs`` (e.g. ``kv_cache_memory_bytes``, ``max_num_seqs``) go to vLLM as they are.

    Raises ``FileNotFoundError`` for a directory without ``value_head.safetensors`` and ``ValueError`` for a
    checkpoint whose architecture the plugin does not register.
    """
    require_vllm()
    path = Path(model)
    if str(model) in EMBEDDED_MODELS or not (path / "config.json").is_file():
        raise ValueError(f"{model}: vLLM serves a LenVM checkpoint directory (config.json, weights and "
                         "value_head.safetensors); a short name is a bare backbone without a head")
    if not (path / VALUE_HEAD_FILE).is_file():
        raise FileNotFoundError(f"{path / VALUE_HEAD_FILE} not found: a LenVM checkpoint needs its value head beside "
                                "the backbone (LenVM.save_pretrained writes both)")
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).architectures or []
    if not set(architectures) & set(ARCHITECTURES):
        raise ValueError(f"{path / 'config.json'} names the architectures {architectures}; the vLLM plugin serves "
                         f"{sorted(ARCHITECTURES)}")
    args = dict(model=str(path), runner="pooling", skip_tokenizer_init=True, dtype=dtype or "auto",
                max_model_len=max_model_len, enforce_eager=enforce_eager,
                gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
                trust_remote_code=trust_remote_code)
    if block_size is not None:
        args["block_size"] = block_size
    return args | engine_kwargs


class VLLMLenVM(LenVM):
    """A LenVM scored by vLLM: the config and records here (on ``meta``), the weights in a vLLM engine.

    Build it with :meth:`from_pretrained`. The engine (a ``vllm.LLMEngine``: unlike ``vllm.LLM``, which answers
    one pooling task in vLLM 0.32, it takes the task per request) starts on first use; :meth:`close` shuts it
    down. ``forward`` and :meth:`trunk` do not run here: use :meth:`score` and :meth:`hidden_states`.
    """

    def __init__(self, config, *, gamma: float, engine_args: dict):
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            backbone = AutoModelForCausalLM.from_config(config)
        super().__init__(backbone, gamma=gamma)
        self.engine_args = engine_args
        self._engine = None
        self._requests = 0  # calls of _pool, for unique request ids

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, gamma: float | None = None,
                        **engine_options) -> "VLLMLenVM":
        """A LenVM checkpoint in the reference layout, scored by vLLM; ``engine_options`` as in
        :func:`lenvm_engine_args`. ``gamma`` and the records are read and checked as by
        :meth:`LenVM.from_pretrained`."""
        from transformers import AutoConfig

        args = lenvm_engine_args(name_or_path, **engine_options)
        config = AutoConfig.from_pretrained(args["model"], trust_remote_code=args["trust_remote_code"])
        gamma, records = read_config_records(config, gamma, Path(args["model"]) / "config.json")
        model = cls(config, gamma=gamma, engine_args=args)
        for attribute, value in records.items():
            setattr(model, attribute, value)
        return model.eval()

    @property
    def engine(self):
        """The ``vllm.LLMEngine`` (started on first use): one engine answers every pooling task per request."""
        if self._engine is None:
            import vllm

            self._engine = vllm.LLMEngine.from_engine_args(vllm.EngineArgs(**self.engine_args))
        return self._engine

    def _pool(self, task: str, sequences: list[list[int]], progress: bool) -> list[torch.Tensor]:
        """Pooling ``task``'s float32 CPU tensor per sequence, in order (vLLM schedules all of them at once)."""
        from tqdm.auto import tqdm
        from vllm import PoolingParams

        for i, seq in enumerate(sequences):
            if len(seq) == 0:
                raise ValueError(f"sequences[{i}] is empty; a state needs at least one token")
        engine, self._requests = self.engine, self._requests + 1
        ids = [f"{self._requests}-{i}" for i in range(len(sequences))]
        for request_id, seq in zip(ids, sequences):
            engine.add_request(request_id, {"prompt_token_ids": list(seq)}, PoolingParams(task=task))
        results = {}
        with tqdm(total=len(ids), desc=f"vLLM {task}", disable=not progress) as bar:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        results[out.request_id] = out.outputs.data.float().cpu()
                        bar.update()
        return [results[request_id] for request_id in ids]

    @torch.inference_mode()
    def score(self, sequences: list[list[int]], *, batch_size: int = 16, progress: bool = False,
              images: list | None = None) -> list[LenVMOutput]:
        """:meth:`LenVM.score` through vLLM: float32 ``values`` and ``logits`` (len(sequences[i]),) per sequence.

        All sequences go to vLLM in one call; its scheduler batches them (``batch_size`` is not used).
        """
        if images is not None and any(image is not None for image in images):
            raise ValueError("the vLLM LenVM scores text only; score image inputs with LenVM.score")
        logits = [z.squeeze(-1) for z in self._pool("token_classify", sequences, progress)]
        return [LenVMOutput(values=logits_to_value(z), logits=z) for z in logits]

    def hidden_states(self, sequences: list[list[int]], *, progress: bool = False) -> list[torch.Tensor]:
        """The trunk's final hidden states, float32 (len(sequences[i]), H) per sequence, as :meth:`LenVM.trunk`
        gives them: the states the value head reads (e.g. to cache features for head-only fits)."""
        return self._pool("token_embed", sequences, progress)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("a VLLMLenVM runs in vLLM: use score() or hidden_states(), or LenVM.from_pretrained "
                                  "for a forward pass in this process")

    def trunk(self, *args, **kwargs):
        raise NotImplementedError("a VLLMLenVM runs in vLLM: use hidden_states()")

    def close(self) -> None:
        """Shut the engine down (its processes end); the next call starts a new one."""
        if self._engine is not None:
            self._engine.engine_core.shutdown()
            self._engine = None
