"""``python -m pipeline replace-ct``: create or replace the container, keeping its credentials volume."""
