"""Data: prompt sources, policy rollouts, and value-pretraining datasets."""

from lenvm_rl.data.prompts import encode_prompt, load_prompts, to_messages
from lenvm_rl.data.rollouts import RolloutConfig, group_by_prompt, read_rollouts, sample_rollouts, vllm_engine
from lenvm_rl.data.samplers import ShuffledLengthGroupedSampler
from lenvm_rl.data.value_dataset import ValueDataCollator, build_value_dataset, gamma_from_records
from lenvm_rl.data.word_problems import WordProblem, generate_word_problems, word_problem_dataset

__all__ = [
    "RolloutConfig",
    "ShuffledLengthGroupedSampler",
    "ValueDataCollator",
    "WordProblem",
    "build_value_dataset",
    "encode_prompt",
    "gamma_from_records",
    "group_by_prompt",
    "load_prompts",
    "read_rollouts",
    "sample_rollouts",
    "to_messages",
    "vllm_engine",
    "word_problem_dataset",
    "generate_word_problems",
]
