"""Logs, audit events and metrics (E2, E4)."""
