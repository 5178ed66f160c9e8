"""Finding GGUF models on this machine: one module per source, `scan()` over all of them."""
