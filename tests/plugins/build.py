"""Fixtures for the image build: the lab site built once per session (owned by the build work)."""
