"""cxlspeaks: Bragg-peak hit finding, peak finding and beam-parameter inference for CXLS Eiger 4M frames.

Importing the package first drops ``HDF5_PLUGIN_PATH`` from ``os.environ`` when it names hdf5plugin's own plugin
folder (the setting CrystFEL needs to read bitshuffle frames): with it, the HDF5 library inside h5py loads
hdf5plugin's filters a second time as dynamic plugins and every bitshuffle write fails ("Unable to synchronously
create dataset (error during user callback)"). This has to happen before h5py is first imported, which is why it
lives here. Child processes that run CrystFEL get the variable back through :func:`crystfel_env`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__version__ = "0.1.0"

PLUGIN_PATH_VAR = "HDF5_PLUGIN_PATH"


def hdf5plugin_dir() -> Path | None:
    """hdf5plugin's own filter folder (``.../site-packages/hdf5plugin/plugins``), found without importing it;
    None when hdf5plugin is not installed."""
    spec = importlib.util.find_spec("hdf5plugin")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) / "plugins" if locations else None


def _drop_own_plugin_path(environ=os.environ) -> bool:
    """Remove HDF5_PLUGIN_PATH from ``environ`` when every entry of it is hdf5plugin's own folder (the entries
    are ':'-separated); another folder is left alone. True when it was removed."""
    value = environ.get(PLUGIN_PATH_VAR)
    own = hdf5plugin_dir()
    if not value or own is None:
        return False
    entries = [e for e in value.split(os.pathsep) if e]
    try:
        same = bool(entries) and all(Path(e).resolve() == own.resolve() for e in entries)
    except OSError:
        return False
    if same:
        del environ[PLUGIN_PATH_VAR]
    return same


def crystfel_env(environ=None) -> dict[str, str]:
    """A copy of the environment for a CrystFEL child process (pattern_sim, indexamajig): HDF5_PLUGIN_PATH set to
    hdf5plugin's filter folder so it reads bitshuffle-LZ4 frames (a value already set is kept)."""
    env = dict(os.environ if environ is None else environ)
    own = hdf5plugin_dir()
    if own is not None and not env.get(PLUGIN_PATH_VAR):
        env[PLUGIN_PATH_VAR] = str(own)
    return env


_drop_own_plugin_path()
