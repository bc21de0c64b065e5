"""PPO on GSM8K with a LenVM critic: a trained task value head beside the frozen LenVM length head.

    # CPU, offline: SmolLM2-135M-Instruct on generated word problems, a LenVM pretrained on the fly (--lenvm auto,
    # cached, shared with the GRPO recipe's cache when the settings agree), a few PPO steps, a before/after table
    accelerate launch recipes/ppo_gsm8k.py --config recipes/configs/ppo_gsm8k_cpu.yaml

    # GPUs: GSM8K from the Hub, every GPU of the machine (DDP); the task head on the frozen LenVM trunk
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/ppo_gsm8k.py \
        --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --lenvm ./my-lenvm --output_dir ppo-qwen2.5-1.5b-lenvm \
        --bf16 --learning_rate 1e-6 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 \
        --num_mini_batches 4 --num_ppo_epochs 2 --max_completion_length 1024 --temperature 1.0 \
        --task_critic head --kl_coef 0.05 --length_estimator lenvm --length_coef 0.1 --max_steps 800 \
        --save_steps 80 --logging_steps 1

    # ZeRO-2 or ZeRO-3 (needs deepspeed); one GPU
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/ppo_gsm8k.py --lenvm ./my-lenvm ...
    accelerate launch --config_file recipes/accelerate/single.yaml recipes/ppo_gsm8k.py --lenvm ./my-lenvm ...

The options are the GRPO recipe's (data, rewards, ``--lenvm PATH|auto``, evaluation) plus PPO's
(``num_ppo_epochs``, ``num_mini_batches``, ``cliprange``, ``vf_coef``, ``kl_coef``, ``gamma``, ``lam``,
``task_critic`` head | lora | separate...). PPO with the same critic and no length term: ``--length_coef 0``;
plain PPO without a LenVM: ``--length_estimator none``; the sequence-level twin:
``--length_estimator group --length_gamma 0.995 --num_generations 4``.
Every option: ``python recipes/ppo_gsm8k.py --help``; the pipeline is :mod:`lenvm_rl.scripts.grpo`.
"""

from lenvm_rl.scripts import end_processes
from lenvm_rl.scripts.grpo import main, make_parser
from lenvm_rl.trainers import PPOConfig

if __name__ == "__main__":
    main(*make_parser(PPOConfig).parse_args_and_config())
    end_processes()
