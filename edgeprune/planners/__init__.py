"""Planners: given a step's context and target, propose which channels go."""
