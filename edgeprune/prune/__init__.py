"""Prune: the component graph, channel masks, importance, and the plan that records every cut."""
