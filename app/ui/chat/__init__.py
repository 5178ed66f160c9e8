"""The Chat tab: conversations with `auto` or a chosen model, answered through the engine as the API is."""
