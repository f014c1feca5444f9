"""Cohort runs: many cases from a manifest, concurrently, resumable, with metrics and a report."""
