"""The headless core: discovery, registry, workers and routing. Never imports Qt."""
