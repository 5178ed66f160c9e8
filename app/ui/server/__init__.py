"""The Server tab: the HTTP server on the running loop, where it listens, who may call it, and the request log."""
