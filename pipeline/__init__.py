"""Meridian appliance pipeline: build an immutable Proxmox LXC template, replace CT 457 with it."""
