"""Pretrain a Length Value Model on policy rollouts.

    # 1. sample completions from the policy, at the temperature RL or decoding will use
    # (--prompt_format chat: each question as a user message under the chat template, as in a conversational
    # GRPO dataset; without it a string is raw text, as TRL tokenizes a string prompt; the LenVM records which)
    lenvm-rl rollout --model Qwen/Qwen2.5-1.5B-Instruct --prompts openai/gsm8k:main --prompt_column question \
        --prompt_format chat -n 16 --temperature 1.0 --output rollouts/train.jsonl

    # 2. train, on every GPU of the machine
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/pretrain_lenvm.py \
        --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --train_rollouts rollouts/train.jsonl \
        --eval_rollouts rollouts/test.jsonl --output_dir lenvm-qwen2.5-1.5b \
        --per_device_train_batch_size 16 --gradient_accumulation_steps 8 --num_train_epochs 2 --bf16

ZeRO-3 for large backbones: ``--config_file recipes/accelerate/zero3.yaml`` (needs deepspeed).
Two CPU processes (gloo): ``accelerate launch --multi_gpu --num_processes 2 recipes/pretrain_lenvm.py ...
--use_cpu`` (with accelerate 1.15, ``--cpu --num_processes 2`` starts one process).
Every option: ``python recipes/pretrain_lenvm.py --help``.
"""

from lenvm_rl.scripts import end_processes
from lenvm_rl.scripts.pretrain import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_processes()
