"""The window's icons as package data (read with importlib.resources, so a wheel install has them too).

Rendered from the SVG masters in resources/ by packaging/render_icons.py: never edit these copies by hand.
"""
