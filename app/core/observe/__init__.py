"""What is recorded: the decision log, Prometheus metrics, A/B experiments and their statistics."""
