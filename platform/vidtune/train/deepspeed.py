"""DeepSpeed configs from vidtune's training settings: ZeRO stage, offload, precision, batch, schedule.

One function builds the dict DeepSpeed takes, so the plain-process loop, Ray Train workers and the GPU
benchmark all run the same configuration for the same settings.
"""

from __future__ import annotations

from typing import Any


def deepspeed_config(
    *,
    zero_stage: int = 2,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    micro_batch: int = 1,
    grad_accum: int = 1,
    warmup_ratio: float = 0.03,
    total_steps: int = 1,
    clip: float = 1.0,
    bf16: bool = False,
) -> dict[str, Any]:
    """The DeepSpeed config dict. ``total_steps`` counts optimizer steps (for the cosine schedule).

    The optimizer is not in it: the loop passes a torch AdamW (no op to JIT-compile on a fresh
    machine) or, with optimizer offload, DeepSpeed's CPU Adam, and the schedule scales its lr."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if offload_params and zero_stage != 3:
        raise ValueError("parameter offload needs ZeRO stage 3")
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload_optimizer and zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if zero_stage == 3:
        # Let the final save gather the shards into one 16-bit state dict (Hugging Face format).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    warmup = int(round(warmup_ratio * total_steps))
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(1, total_steps),
                # DeepSpeed wants at least one warmup step; starting it at the full lr means none.
                "warmup_num_steps": max(1, warmup),
                "warmup_min_ratio": 0.0 if warmup else 1.0,
                "warmup_type": "linear",
                "cos_min_ratio": 0.0,
            },
        },
        "steps_per_print": 10**9,  # vidtune prints its own training line
        "wall_clock_breakdown": False,
    }
