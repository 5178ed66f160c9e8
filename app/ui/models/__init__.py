"""The Models tab: the table of every known model and the actions on it."""
