"""Persistence: one SQLite store (connection, write-behind) and its schema migrations."""
