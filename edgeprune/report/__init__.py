"""Report: Markdown and HTML reports of runs and benchmarks, and their figures."""
