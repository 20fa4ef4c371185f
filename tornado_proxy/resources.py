"""Where the gateway's own data files are: ``schemas/`` and ``conf/``.

In a checkout (and an editable install) they are the repository's top-level
directories.  A built wheel carries them inside the package, as
``tornado_proxy/_data/schemas`` and ``tornado_proxy/_data/conf`` (``setup.py`` copies
them there at build time), so an installed gateway finds them wherever pip put it
(a venv, ``--user``, ``--target``, a container layer), with no source tree around.
Every reader goes through :func:`data_dir`; schemas are read by
``validation.load_schema``.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

DATA_DIRS = ("schemas", "conf")
PACKAGED = "_data"  # the folder inside the package that a wheel ships them in

_found: dict[str, Path] = {}


def data_dir(name: str) -> Path:
    """The directory ``name`` (``"schemas"`` or ``"conf"``): packaged first, then the checkout's."""
    found = _found.get(name)
    if found is not None:
        return found
    if name not in DATA_DIRS:
        raise KeyError(f"no data directory {name!r}")
    packaged = importlib.resources.files(__package__) / PACKAGED / name
    checkout = Path(__file__).resolve().parent.parent / name
    for candidate in (packaged, checkout):
        # a real directory only: the files are read with pathlib, and the package is never zipped
        if isinstance(candidate, Path) and candidate.is_dir():
            _found[name] = candidate
            return candidate
    raise FileNotFoundError(f"no '{name}' directory: looked in {packaged} and {checkout}")
