"""Where a request goes: what it needs, which models may take it (health, quota, capabilities), and the strategy
that picks one."""
