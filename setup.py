"""Build hook only; the metadata is in setup.cfg.

``schemas/`` and ``conf/`` stay at the top of the repository, where a checkout reads
them.  A wheel carries a copy inside the package (``tornado_proxy/_data/``), where
``tornado_proxy.resources`` finds it once installed, whatever the install prefix.
"""
from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA_DIRS = ("schemas", "conf")  # tornado_proxy.resources.DATA_DIRS


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's own directories
        for name in DATA_DIRS:
            for src in sorted((ROOT / name).rglob("*.json")):
                dest = Path(self.build_lib) / "tornado_proxy" / "_data" / src.relative_to(ROOT)
                self.mkpath(str(dest.parent))
                self.copy_file(str(src), str(dest))


setup(cmdclass={"build_py": BuildPyWithData})
