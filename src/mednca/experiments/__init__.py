"""Experiments built on the pipeline: compare runs, robustness, the report, the speed benchmark."""
