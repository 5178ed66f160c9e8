"""Which models exist: GGUF headers, discovery on this machine, the registry of every known model."""
