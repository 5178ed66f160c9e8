"""The Routing tab: strategy and parameters, A/B experiments, and a dry run of a request."""
