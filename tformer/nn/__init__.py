"""The networks: attention, positions, layers, and the models built from them (encoder–decoder, GPT, BERT,
Llama), and LoRA adapters to fine-tune them (saved by :mod:`tformer.training.adapters`)."""

from tformer.nn.lora import (
    LoRALinear,
    apply_lora,
    lora_layers,
    lora_state_dict,
    lora_targets,
    merge_lora,
    unmerge_lora,
)

__all__ = ["LoRALinear", "apply_lora", "lora_layers", "lora_state_dict", "lora_targets", "merge_lora",
           "unmerge_lora"]
