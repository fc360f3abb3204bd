"""Acceptance suite for a deployed appliance (see conftest.py for how to run it)."""
