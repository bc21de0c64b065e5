"""Data: prompt sources and the one prompt encoder, math problems, policy rollouts, and value-pretraining datasets."""

from lenvm_rl.data.problems import INSTRUCTION, WORD_PROBLEMS, load_math_problems
from lenvm_rl.data.prompts import (
    PROMPT_FORMATS,
    chat_template_hash,
    encode_prompt,
    format_mismatch,
    load_prompts,
    prompt_format,
    to_messages,
)
from lenvm_rl.data.rollouts import (
    RolloutConfig,
    RolloutEncoding,
    group_by_prompt,
    read_rollouts,
    rollout_encoding,
    sample_rollouts,
    vllm_engine,
)
from lenvm_rl.data.samplers import ShuffledLengthGroupedSampler
from lenvm_rl.data.value_dataset import ValueDataCollator, build_value_dataset, dataset_encoding, gamma_from_records
from lenvm_rl.data.word_problems import WordProblem, generate_word_problems, word_problem_dataset

__all__ = [
    "INSTRUCTION",
    "PROMPT_FORMATS",
    "RolloutConfig",
    "RolloutEncoding",
    "ShuffledLengthGroupedSampler",
    "ValueDataCollator",
    "WORD_PROBLEMS",
    "WordProblem",
    "build_value_dataset",
    "chat_template_hash",
    "dataset_encoding",
    "encode_prompt",
    "format_mismatch",
    "gamma_from_records",
    "generate_word_problems",
    "group_by_prompt",
    "load_math_problems",
    "load_prompts",
    "prompt_format",
    "read_rollouts",
    "rollout_encoding",
    "sample_rollouts",
    "to_messages",
    "vllm_engine",
    "word_problem_dataset",
]
