"""What runs: the pool of loaded models, where each goes (RAM / VRAM), local worker processes and remote backends."""
