"""Command line: ``python -m pipeline COMMAND --site FILE ...``.

Each command lives in its own module exposing ``configure(parser)`` and ``main(args) -> int``.
Errors a user can cause print as one message (no traceback) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.errors import PipelineError
from pipeline.progress import console

COMMANDS = {
    "build": ("pipeline.builder.cli", "build the LXC template, sysext images and seed"),
    "seed": ("pipeline.cloudinit.cli", "render cloud-init user-data, meta-data, network-config and seed.iso"),
    "replace-ct": ("pipeline.replace.cli", "create or replace the container from a template"),
    "oauth-login": ("pipeline.oauth", "one-time Claude OAuth login inside the container"),
    "endpoints": ("pipeline.endpoints", "how clients reach the deployed appliance"),
}

EXIT_USER_ERROR = 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(module=module)
        importlib.import_module(module).configure(cmd)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return importlib.import_module(args.module).main(args)
    except PipelineError as exc:
        console.print("[bold red]error:[/bold red]", end=" ")
        console.print(str(exc), markup=False)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
