"""What every build step needs: the site, the data folders, the cache and scratch space."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pipeline.builder.cache import Cache
from pipeline.config import Site
from pipeline.resources import data_dir

DEFAULT_CACHE = Path("/var/cache/meridian-pipeline")
IMAGE_DIR = data_dir("image")
SYSEXT_DIR = data_dir("sysext")


@dataclass(frozen=True)
class BuildContext:
    site: Site
    out: Path
    cache: Cache
    image_dir: Path = IMAGE_DIR
    sysext_dir: Path = SYSEXT_DIR

    @property
    def work(self) -> Path:
        """Scratch space, on the cache's file system so results can be renamed into it."""
        return self.cache.root / "work"

    @property
    def downloads(self) -> Path:
        return self.cache.root / "downloads"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def log(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{name}.log"
        path.write_text("")
        return path


def read_toml(path: Path) -> dict:
    with open(path, "rb") as fh:
        return tomllib.load(fh)
