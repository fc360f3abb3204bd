"""The image build: a Debian base, three system extensions and the Proxmox LXC template.

``python -m pipeline build --site FILE --out DIR``; the steps are listed in orchestrate.py.
"""
