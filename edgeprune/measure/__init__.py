"""Measure: profiles attributed to modules, the profile store, and the cost model."""
