"""Fixtures for the local lab: a running lab API server (owned by the lab work)."""
