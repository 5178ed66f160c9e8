"""Reading GGUF files: the header (metadata and tensor infos), defensively and fast."""
