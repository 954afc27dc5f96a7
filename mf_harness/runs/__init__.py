"""Runs over many head sets: sweeps with controls, typed records, statistics, tables and plots."""
