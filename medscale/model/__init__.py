"""Base models, LoRA adapters and the tiny random Qwen3 builder."""
