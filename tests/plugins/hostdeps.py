"""What the project needs from the host: the commands it runs and the host files it includes.

Read from the code, so a new command or include is covered without anyone listing it:

- a command is a string that opens an argument list (``run(["zstd", ...])``), the tool name
  handed to the lab's LXC wrapper (``_lxc("lxc-info", ...)``) or a key of a ``TOOLS`` table,
  when such an executable exists on this host (strings that name none are data, not commands);
- the host files are the ``lxc.include`` lines of the configs the lab writes, followed into
  the files they include.

tests/test_host_packages.py checks both against setup/apt-packages.txt.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CODE_DIRS = ("pipeline", "lab", "tests", "benchmarks", "acceptance")
PACKAGE_LIST = REPO / "setup" / "apt-packages.txt"
COMMAND = re.compile(r"[a-z][a-z0-9._+-]*")
# Strings in command position that exist as host executables but are not run on the host.
NOT_HOST_COMMANDS = {
    "node": "the sysext layer named node (pipeline/builder/layers.py); Node runs inside the CT",
}


def listed_packages() -> list[str]:
    """The package names in setup/apt-packages.txt (comments stripped)."""
    names = []
    for line in PACKAGE_LIST.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def command_strings() -> dict[str, str]:
    """{command: "file:line" of its first use} for every string in command position."""
    found: dict[str, str] = {}
    for base in CODE_DIRS:
        for path in sorted((REPO / base).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                for text in _command_position(node):
                    found.setdefault(text, f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}")
    return found


def _command_position(node: ast.AST) -> list[str]:
    candidates: list[ast.expr] = []
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        candidates.append(node.elts[0])
    elif isinstance(node, ast.Call) and _called_name(node) == "_lxc" and node.args:
        candidates.append(node.args[0])
    elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
            isinstance(t, ast.Name) and t.id == "TOOLS" for t in node.targets):
        candidates.extend(k for k in node.value.keys if k is not None)
    return [c.value for c in candidates
            if isinstance(c, ast.Constant) and isinstance(c.value, str) and COMMAND.fullmatch(c.value)]


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def host_commands() -> dict[str, str]:
    """{command: where it is used} for the commands the code runs on the host."""
    return {name: where for name, where in command_strings().items()
            if name not in NOT_HOST_COMMANDS and shutil.which(name)}


def lxc_includes(config_text: str, root: Path = Path("/")) -> list[str]:
    """Every file an LXC config includes, directly or through included files (absolute paths).

    Files are read below ``root`` (a clean Debian root in the fresh-machine test); a missing
    file is still listed, so the caller can name it, but a missing include *directory* is
    not: LXC skips it (Debian's userns.conf names userns.conf.d/, which no package ships).
    """
    seen: list[str] = []
    pending = _includes(config_text)
    while pending:
        path = pending.pop(0)
        if path in seen:
            continue
        seen.append(path)
        local = root / path.lstrip("/")
        if local.is_file():
            pending.extend(_includes(local.read_text(errors="replace")))
        elif path.endswith("/") and not local.exists():
            seen.remove(path)
        elif local.is_dir():
            pending.extend("/" + p.relative_to(root).as_posix() for p in sorted(local.glob("*.conf")))
    return seen


def _includes(text: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in text.splitlines()
            if re.match(r"\s*lxc\.include\s*=", line)]
