"""Artifact: export with a numerical check, and deployment onto a device."""
