"""The Resources tab: live RAM and VRAM, and what each loaded model takes."""
