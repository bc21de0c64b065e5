"""Length-aware GRPO on GSM8K: the policy learns to be correct and concise, with a LenVM length critic.

    # CPU, offline, about 8 minutes on 2 cores: SmolLM2-135M-Instruct on generated word problems, the LenVM the
    # package ships for it (--lenvm auto), a few GRPO steps, a before/after table
    accelerate launch recipes/grpo_gsm8k.py --config recipes/configs/grpo_gsm8k_cpu.yaml

    # GPUs: GSM8K from the Hub, every GPU of the machine (DDP)
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/grpo_gsm8k.py \
        --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --lenvm auto --lenvm_auto_prompts 256 \
        --lenvm_auto_samples 8 --output_dir grpo-qwen2.5-1.5b-lenvm --bf16 --learning_rate 1e-6 \
        --per_device_train_batch_size 8 --num_generations 8 --max_completion_length 1024 --temperature 1.0 \
        --length_estimator lenvm --length_coef 0.1 --max_steps 500 --save_steps 100 --logging_steps 1

    # ZeRO-2 (optimiser states and gradients sharded) or ZeRO-3 (parameters too); needs deepspeed
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/grpo_gsm8k.py --lenvm ./my-lenvm ...
    accelerate launch --config_file recipes/accelerate/zero3.yaml recipes/grpo_gsm8k.py --lenvm ./my-lenvm ...

    # one GPU
    accelerate launch --config_file recipes/accelerate/single.yaml recipes/grpo_gsm8k.py ...

A LenVM pretrained beforehand (``lenvm-rl rollout`` + ``recipes/pretrain_lenvm.py``, sharded across
GPUs) is passed with ``--lenvm PATH``; ``--lenvm auto`` samples its rollouts on the main process only.
The sequence-level twin needs no LenVM: ``--length_estimator group --length_gamma 0.995``.
Every option: ``python recipes/grpo_gsm8k.py --help``; the pipeline is :mod:`lenvm_rl.scripts.grpo`.
"""

from lenvm_rl.scripts import end_processes
from lenvm_rl.scripts.grpo import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
    end_processes()
