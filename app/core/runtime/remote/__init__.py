"""Remote backends: models served by another OpenAI-compatible server, proxied over HTTP."""
