"""``python -m pipeline endpoints --site FILE``: how clients reach the deployed appliance.

Prints the two API endpoints with a ready-to-run check for each, where the LiteLLM master key
comes from (its source, never its value), the metrics URL and the OAuth step. It reads only
the site file: nothing is sent anywhere.
"""

from __future__ import annotations

import argparse

from pipeline.config import load_site


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (sites/*.yml)")


def main(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    address = site.container.network.address.split("/")[0]
    ports = site.services
    key = site.litellm.master_key
    key_expr = f"${key.env}" if key.env else "$MASTER_KEY"
    print(f"CT {site.container.vmid} ({site.container.hostname}) at {address}:")
    print(f"  Anthropic format (Cline, Aider, Home Assistant): http://{address}:{ports.meridian_port}")
    print(f"      curl http://{address}:{ports.meridian_port}/v1/models")
    print(f"  OpenAI format (Open WebUI, Pulse): http://{address}:{ports.litellm_port}/v1 with the master key")
    print(f"      curl -H \"Authorization: Bearer {key_expr}\" http://{address}:{ports.litellm_port}/v1/models")
    print(f"      the master key comes from the {key.describe()}")
    print(f"  metrics: http://{address}:{ports.node_exporter_port}/metrics")
    print(f"  models: {', '.join(site.models)}")
    print(f"  one-time Claude login: python -m pipeline oauth-login --site {args.site}")
    return 0
