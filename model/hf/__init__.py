"""Hugging Face interop: Llama-family checkpoints (Llama, Qwen2, Mistral) in and out.

config.py maps config.json ↔ ModelConfig; weights.py maps safetensors tensors ↔ the jaxchat
parameter tree (stacked layers, logical shardings), reading and writing one tensor at a time.
"""
