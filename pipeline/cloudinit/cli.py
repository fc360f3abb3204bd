"""`python -m pipeline seed --site FILE --out DIR`: the site's seed with its master key."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cloudinit.output import write_seed
from pipeline.config import load_site
from pipeline.errors import PipelineError
from pipeline.progress import console, step


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, type=Path, help="site file (sites/*.yml)")
    parser.add_argument("--out", required=True, type=Path, help="directory for the seed files")
    parser.add_argument(
        "--instance-id", help="cloud-init instance-id (default: a fresh one per run)"
    )
    parser.add_argument(
        "--deploy-key", type=Path, metavar="PUBFILE",
        help="an OpenSSH public key file also authorized for the admin user",
    )


def main(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    deploy_key = _read_public_key(args.deploy_key) if args.deploy_key else None
    with step("read the LiteLLM master key"):
        # Before anything is written: a missing, empty or unsafe key stops here.
        key = site.litellm.master_key.read(label="litellm.master_key", check_strength=True)
    with step(f"render and validate the seed for site {site.name}"):
        paths = write_seed(
            site, args.out, master_key=key, instance_id=args.instance_id,
            deploy_public_key=deploy_key,
        )
    for path in paths:
        console.print(f"wrote {path}", markup=False)
    return 0


def _read_public_key(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise PipelineError(f"--deploy-key {path}: cannot read: {exc.strerror}") from None
    if not text.startswith(("ssh-", "ecdsa-", "sk-")) or "PRIVATE KEY" in text:
        raise PipelineError(f"--deploy-key {path}: not an OpenSSH public key (.pub)")
    return text
