"""Fused kernels for training: the LoRA branch of each adapted linear (`lora`), Triton where CUDA has it, the same
math in PyTorch elsewhere. Nothing of medscale is imported here, so a kernel is tested against peft on its own."""
