"""CrystFEL geometry files (crystfel_geometry(5), CrystFEL 0.9-0.11): read (written by :mod:`.writer`).

Understood in full: panels (``min/max_fs/ss``, ``corner_x/y``, ``fs``/``ss`` vectors, ``res``, ``clen``,
``coffset``, ``adu_per_photon``/``adu_per_eV``, ``max_adu``, ``data``, ``dim0..n`` incl. numeric module
placeholders), top-level defaults for the panels that follow, bad regions in fs/ss (optionally per panel) and in
lab x/y, ``no_index``, ``mask_edge_pixels``, ``flag_lessthan``/``flag_morethan``/``flag_equal``, the masks
``mask0..7_data/_file/_goodbits/_badbits`` and their old synonyms ``mask``/``mask_file``/``mask_good``/``mask_bad``,
``rigid_group_*``, ``rigid_group_collection_*`` and ``group_*`` lines (kept and written back), and values with
units or from the data files:

- ``clen = 95.3 mm`` / ``0.0953 m`` / ``0.0953`` (metres), ``clen = /LCLS/detector_1/EncoderValue`` (a per-frame
  HDF5 path; without unit **mm**, CrystFEL's historical rule; ``/path m`` for metres);
- ``photon_energy = 7 keV`` / ``7000 eV`` / ``7000`` (eV) or ``/path [eV|keV]``; ``wavelength = 1.77 A`` or
  ``/path A`` (units required, as in CrystFEL); ``coffset`` (m) may also be a path.

A literal camera length above 10 m is refused (``clen = 150`` is 150 m; the message suggests ``150 mm``).
Refused with a one-line :class:`GeometryError` (no reader here would honour them): ``detector_shift_x/y``,
``electron_voltage``, ``data`` paths with a ``%`` placeholder, placeholder dims after data dims, unknown panel keys.
Other unknown top-level keys (``peak_list``, ...) are kept in ``Geometry.header`` and written back.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .model import Geometry
from .parts import (ENERGY_UNITS, LENGTH_UNITS, WAVELENGTH_UNITS, BadRegion, GeometryError, MaskSpec, Panel,
                    ValueRef)
from ..constants import HC_EV_A

_PANEL_INT_KEYS = ("min_fs", "max_fs", "min_ss", "max_ss")
_VECTOR_RE = re.compile(r"([+-]?\s*[0-9.eE+-]*)\s*([xyz])")
_MASK_RE = re.compile(r"mask([0-7])_(data|file|goodbits|badbits)$")
_OLD_MASK_KEYS = {"mask": "mask0_data", "mask_file": "mask0_file", "mask_good": "mask0_goodbits",
                  "mask_bad": "mask0_badbits"}
_FLAG_KEYS = {"flag_lessthan": "lessthan", "flag_morethan": "morethan", "flag_equal": "equal"}
_PANEL_KEYS = {"min_fs", "max_fs", "min_ss", "max_ss", "corner_x", "corner_y", "fs", "ss", "res", "clen",
               "coffset", "adu_per_photon", "adu_per_eV", "data", "max_adu", "no_index", "mask_edge_pixels",
               "saturation_map", "saturation_map_file", "satmap", "satmap_file", "badrow_direction",
               *_OLD_MASK_KEYS, *_FLAG_KEYS}
#: Panel keys kept as text in ``Panel.extra`` and written back (not used by cxlspeaks).
_EXTRA_KEYS = {"adu_per_eV", "saturation_map", "saturation_map_file", "satmap", "satmap_file", "badrow_direction"}
_REFUSED_TOP = {"detector_shift_x": "per-frame detector shifts are not supported",
                "detector_shift_y": "per-frame detector shifts are not supported",
                "electron_voltage": "electron diffraction (electron_voltage) is not supported"}


def _is_panel_key(key: str) -> bool:
    return key in _PANEL_KEYS or bool(_MASK_RE.match(key)) or bool(re.fullmatch(r"dim\d+", key))


# ---------------------------------------------------------------------- reading
def read_geometry(path: str | Path) -> Geometry:
    """Read a CrystFEL geometry file; errors (GeometryError, one line) name the file and the line or key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GeometryError(f"{path}: cannot read geometry file ({exc.strerror})") from None
    try:
        return parse_geometry(text, source_path=path)
    except GeometryError as exc:
        raise GeometryError(f"{path}: {exc}") from None


def parse_geometry(text: str, source_path: str | Path | None = None) -> Geometry:
    """Parse CrystFEL geometry text. Top-level values are defaults for the panels first mentioned after them."""
    defaults: dict[str, str] = {}
    panel_values: dict[str, dict[str, str]] = {}
    bad_values: dict[str, dict[str, str]] = {}
    header: dict[str, str] = {}
    beam: dict[str, str] = {}
    groups: dict[str, dict[str, list[str]]] = {"rigid_group_collection_": {}, "rigid_group_": {}, "group_": {}}
    comment_lines: list[str] = []
    seen_content = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line, _, comment = raw.partition(";")
        line = line.strip()
        if not line:
            if not seen_content and raw.strip().startswith(";"):
                comment_lines.append(comment.strip())
            continue
        seen_content = True
        if "=" not in line:
            raise GeometryError(f"line {lineno}: expected 'key = value', got {line!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        if "/" in key:
            owner, sub = key.split("/", 1)
            if owner.startswith("bad"):
                bad_values.setdefault(owner, {})[sub] = value
            elif owner.startswith(("rigid_group", "group_")):
                raise GeometryError(f"line {lineno}: {owner!r} is reserved for groups; panel names may not start "
                                    "with 'bad', 'group' or 'rigid_group'")
            else:
                if owner not in panel_values:
                    panel_values[owner] = dict(defaults)
                panel_values[owner][_OLD_MASK_KEYS.get(sub, sub)] = value
            continue
        prefix = next((p for p in groups if key.startswith(p)), None)
        if prefix is not None:
            groups[prefix][key[len(prefix):]] = [m.strip() for m in value.split(",") if m.strip()]
        elif key in _REFUSED_TOP:
            raise GeometryError(f"line {lineno}: {key}: {_REFUSED_TOP[key]}")
        elif key in ("photon_energy", "wavelength", "bandwidth"):
            beam[key] = value
        elif _is_panel_key(key):
            defaults[_OLD_MASK_KEYS.get(key, key)] = value
        else:
            header[key] = value
    panels = [_make_panel(name, values) for name, values in panel_values.items()]
    _stack_modules(panels)
    photon_energy, photon_ref = _beam_energy(beam)
    geom = Geometry(panels=panels, bad_regions=[_make_bad_region(n, v) for n, v in bad_values.items()],
                    photon_energy_ev=photon_energy, photon_energy_ref=photon_ref,
                    bandwidth=_to_float("bandwidth", beam["bandwidth"]) if "bandwidth" in beam else None,
                    header=header, comment="\n".join(comment_lines).strip(),
                    rigid_groups=groups["rigid_group_"], rigid_group_collections=groups["rigid_group_collection_"],
                    groups=groups["group_"], source_path=str(source_path) if source_path is not None else None)
    _check_groups(geom)
    return geom


def _beam_energy(beam: dict[str, str]) -> tuple[float | None, ValueRef | None]:
    if "photon_energy" in beam and "wavelength" in beam:
        raise GeometryError("give one of photon_energy and wavelength, not both")
    if "photon_energy" in beam:
        value = _value_with_unit("photon_energy", beam["photon_energy"], ENERGY_UNITS, "eV", "eV")
    elif "wavelength" in beam:
        value = _value_with_unit("wavelength", beam["wavelength"], WAVELENGTH_UNITS, None, None)
        if not isinstance(value, ValueRef):
            value = HC_EV_A / (value * 1e10)
    else:
        return None, None
    if isinstance(value, ValueRef):
        return None, value
    if not value > 0:
        raise GeometryError(f"photon energy must be positive, got {value} eV")
    return value, None


def _value_with_unit(key: str, text: str, units: dict[str, float], literal_unit: str | None,
                     path_unit: str | None) -> float | ValueRef:
    """``number [unit]`` in SI (m or eV; a wavelength stays in m), or ``/hdf5/path [unit]`` as a ValueRef."""
    tokens = text.split()
    if len(tokens) not in (1, 2):
        raise GeometryError(f"{key}: expected 'value [unit]', got {text!r}")
    is_path = tokens[0].startswith("/")
    default = path_unit if is_path else literal_unit
    unit = tokens[1] if len(tokens) == 2 else default
    if unit is None:
        raise GeometryError(f"{key} = {text}: give the unit ({' or '.join(units)}), e.g. '{key} = {text} A'")
    if unit not in units:
        raise GeometryError(f"{key} = {text}: unknown unit {unit!r} (use {' or '.join(units)})")
    if is_path:
        return ValueRef(quantity=key.split("/")[-1], path=tokens[0], unit=unit)
    return _to_float(key, tokens[0]) * units[unit]


def _stack_modules(panels: list[Panel]) -> None:
    """Place the modules of a multi-module array one above the other in the slab (module k at k * rows)."""
    modules = list(dict.fromkeys(p.module_index for p in panels))
    if modules in ([], [()]):
        return
    if () in modules:
        raise GeometryError("some panels have numeric dims (module placeholders) and some have none")
    rows = max(p.max_ss for p in panels) + 1
    for p in panels:
        offset = modules.index(p.module_index) * rows
        p.min_ss, p.max_ss, p.slab_offset_ss = p.min_ss + offset, p.max_ss + offset, offset


def _check_groups(geom: Geometry) -> None:
    names = {p.name for p in geom.panels}
    for group, members in geom.rigid_groups.items():
        unknown = [m for m in members if m not in names]
        if unknown:
            raise GeometryError(f"rigid_group_{group}: unknown panel {unknown[0]!r}")
    for coll, members in geom.rigid_group_collections.items():
        unknown = [m for m in members if m not in geom.rigid_groups]
        if unknown:
            raise GeometryError(f"rigid_group_collection_{coll}: unknown rigid group {unknown[0]!r}")
    for group, members in geom.groups.items():
        unknown = [m for m in members if m not in names and m not in geom.groups]
        if unknown:
            raise GeometryError(f"group_{group}: unknown panel or group {unknown[0]!r}")


def _make_panel(name: str, values: dict[str, str]) -> Panel:
    def need(key: str) -> str:
        if key not in values:
            raise GeometryError(f"panel {name}: missing {key}")
        return values[key]

    for key in values:
        if not _is_panel_key(key):
            raise GeometryError(f"{name}/{key}: unknown panel key (crystfel_geometry(5) has no such key)")
    ints = {k: _to_int(f"{name}/{k}", need(k)) for k in _PANEL_INT_KEYS}
    clen = _value_with_unit(f"{name}/clen", need("clen"), LENGTH_UNITS, "m", "mm")
    coffset = _value_with_unit(f"{name}/coffset", values.get("coffset", "0"), LENGTH_UNITS, "m", "m")
    data = values.get("data")
    if data is not None and "%" in data:
        raise GeometryError(f"{name}/data = {data}: per-frame dataset names ('%' in data) are not supported; "
                            "store frames as one array with dim0 = %")
    masks: dict[int, dict] = {}
    for key, value in values.items():
        m = _MASK_RE.match(key)
        if m:
            field_ = m.group(2)
            if field_ in ("goodbits", "badbits"):
                masks.setdefault(int(m.group(1)), {})[field_] = _to_bits(f"{name}/{key}", value)
            else:
                masks.setdefault(int(m.group(1)), {})[field_] = value
    for i, spec in masks.items():
        if "data" not in spec:
            raise GeometryError(f"{name}/mask{i}: has no mask{i}_data (the location of the mask array)")
        if not spec["data"].startswith("/"):
            raise GeometryError(f"{name}/mask{i}_data = {spec['data']}: expected an HDF5 path starting with '/'")
    return Panel(
        name=name, **ints,
        corner_x=_to_float(f"{name}/corner_x", need("corner_x")),
        corner_y=_to_float(f"{name}/corner_y", need("corner_y")),
        res=_to_float(f"{name}/res", need("res")),
        clen_m=math.nan if isinstance(clen, ValueRef) else clen,
        clen_ref=clen if isinstance(clen, ValueRef) else None,
        coffset_m=0.0 if isinstance(coffset, ValueRef) else coffset,
        coffset_ref=coffset if isinstance(coffset, ValueRef) else None,
        fs_vec=_parse_vector(f"{name}/fs", values.get("fs", "+1.0x")),
        ss_vec=_parse_vector(f"{name}/ss", values.get("ss", "+1.0y")),
        adu_per_photon=_to_float(f"{name}/adu_per_photon", values["adu_per_photon"])
        if "adu_per_photon" in values else None,
        max_adu=_to_float(f"{name}/max_adu", values["max_adu"]) if "max_adu" in values else None,
        data=data,
        dims=_parse_dims(name, values),
        extra={k: v for k, v in values.items() if k in _EXTRA_KEYS},
        masks=tuple(MaskSpec(index=i, **spec) for i, spec in sorted(masks.items())),
        flags=tuple((kind, _to_float(f"{name}/{key}", values[key])) for key, kind in _FLAG_KEYS.items()
                    if key in values),
        no_index=_to_bool(f"{name}/no_index", values.get("no_index", "false")),
        mask_edge_pixels=_to_int(f"{name}/mask_edge_pixels", values.get("mask_edge_pixels", "0")),
    )


def _parse_dims(name: str, values: dict[str, str]) -> tuple[str, ...]:
    numbers = sorted(int(k[3:]) for k in values if re.fullmatch(r"dim\d+", k))
    if not numbers:
        return ("%", "ss", "fs")
    if numbers != list(range(len(numbers))):
        raise GeometryError(f"panel {name}: dims must be dim0..dim{len(numbers) - 1} without gaps")
    dims = tuple(values[f"dim{i}"].strip() for i in numbers)
    for i, d in enumerate(dims):
        if d not in ("%", "ss", "fs") and not d.isdigit():
            raise GeometryError(f"{name}/dim{i} = {d}: expected %, ss, fs or a module number")
    if dims.count("ss") != 1 or dims.count("fs") != 1 or dims.index("ss") > dims.index("fs"):
        raise GeometryError(f"panel {name}: dims need one ss and one fs, ss before fs, got {', '.join(dims)}")
    placeholders = [i for i, d in enumerate(dims) if d == "%"]
    if placeholders != list(range(len(placeholders))):
        raise GeometryError(f"panel {name}: frame placeholders (%) must come first, got {', '.join(dims)}")
    if dims[-2:] != ("ss", "fs"):
        raise GeometryError(f"panel {name}: ss and fs must be the last two dims, got {', '.join(dims)}")
    return dims


def _make_bad_region(name: str, values: dict[str, str]) -> BadRegion:
    kwargs: dict = {}
    for k, v in values.items():
        if k in ("min_fs", "max_fs", "min_ss", "max_ss"):
            kwargs[k] = _to_int(f"{name}/{k}", v)
        elif k in ("min_x", "max_x", "min_y", "max_y"):
            kwargs[k] = _to_float(f"{name}/{k}", v)
        elif k == "panel":
            kwargs[k] = v
        else:
            raise GeometryError(f"{name}: unknown bad-region key {k!r}")
    region = BadRegion(name=name, **kwargs)
    pixel_keys = [kwargs.get(k) for k in ("min_fs", "max_fs", "min_ss", "max_ss")]
    xy_keys = [kwargs.get(k) for k in ("min_x", "max_x", "min_y", "max_y")]
    if any(k is not None for k in pixel_keys) and any(k is not None for k in xy_keys):
        raise GeometryError(f"{name}: a bad region cannot mix fs/ss and x/y")
    if all(k is None for k in pixel_keys) and any(k is None for k in xy_keys):
        raise GeometryError(f"{name}: a bad region needs min/max fs/ss or all of min/max x/y")
    return region


def _to_float(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise GeometryError(f"{key}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise GeometryError(f"{key}: expected a finite number, got {text!r}")
    return value


def _to_int(key: str, text: str) -> int:
    value = _to_float(key, text)
    if value != int(value):
        raise GeometryError(f"{key}: expected an integer, got {text!r}")
    return int(value)


def _to_bits(key: str, text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = _to_int(key, text)
    if value < 0:
        raise GeometryError(f"{key}: expected a non-negative bit mask, got {text!r}")
    return value


def _to_bool(key: str, text: str) -> bool:
    if text.lower() in ("true", "yes"):
        return True
    if text.lower() in ("false", "no"):
        return False
    return _to_float(key, text) != 0


def _parse_vector(key: str, text: str) -> tuple[float, float, float]:
    vec = {"x": 0.0, "y": 0.0, "z": 0.0}
    matches = _VECTOR_RE.findall(text.replace(" ", ""))
    if not matches or "".join(c + a for c, a in matches) != text.replace(" ", ""):
        raise GeometryError(f"{key}: cannot read vector {text!r} (expected e.g. '+1.0x -0.0y')")
    for coeff, axis in matches:
        coeff = coeff or "+1"
        if coeff in ("+", "-"):
            coeff += "1"
        vec[axis] += _to_float(key, coeff)
    if vec == {"x": 0.0, "y": 0.0, "z": 0.0}:
        raise GeometryError(f"{key}: zero vector")
    return (vec["x"], vec["y"], vec["z"])
