"""The desktop app: Qt widgets that adapt the core (app/core); nothing here holds routing or model logic."""
