"""CrystFEL geometry files: the writer (:func:`geometry_text`, behind :meth:`Geometry.to_geom_text`); the reader
is :mod:`.text`. Nothing here imports the model, so :mod:`.model` can use it and :mod:`.text` can import the model.
"""

from __future__ import annotations


def _vector_text(vec: tuple[float, float, float]) -> str:
    return " ".join(f"{c:+.6f}{axis}" for c, axis in zip(vec, "xyz"))


def _fmt(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else f"{value:.1f}"


def geometry_text(geom) -> str:
    """The geometry ``geom`` (a :class:`~cxlspeaks.geometry.model.Geometry`) as CrystFEL geometry text: every
    panel value explicit, groups at the end (as CrystFEL writes them), per-frame values as ``path unit``."""
    lines = [f"; {line}" if line else ";" for line in geom.comment.splitlines()]
    if geom.photon_energy_ref is not None:
        key = "wavelength" if geom.photon_energy_ref.quantity == "wavelength" else "photon_energy"
        lines.append(f"{key} = {geom.photon_energy_ref.text()}")
    elif geom.photon_energy_ev is not None:
        lines.append(f"photon_energy = {_fmt(geom.photon_energy_ev)}")
    if geom.bandwidth is not None:
        lines.append(f"bandwidth = {_fmt(geom.bandwidth)}")
    lines += [f"{k} = {v}" for k, v in geom.header.items()]
    for p in geom.panels:
        lines.append("")
        ss0, ss1 = p.data_ss_range
        values = {
            "min_fs": p.min_fs, "max_fs": p.max_fs, "min_ss": ss0, "max_ss": ss1,
            "corner_x": _fmt(p.corner_x), "corner_y": _fmt(p.corner_y),
            "fs": _vector_text(p.fs_vec), "ss": _vector_text(p.ss_vec),
            "res": _fmt(p.res), "clen": p.clen_ref.text() if p.clen_ref else _fmt(p.clen_m),
            "coffset": p.coffset_ref.text() if p.coffset_ref else _fmt(p.coffset_m),
        }
        if p.adu_per_photon is not None:
            values["adu_per_photon"] = _fmt(p.adu_per_photon)
        if p.max_adu is not None:
            values["max_adu"] = _fmt(p.max_adu)
        if p.data is not None:
            values["data"] = p.data
        for i, dim in enumerate(p.dims):
            values[f"dim{i}"] = dim
        for m in p.masks:
            values[f"mask{m.index}_data"] = m.data
            if m.file is not None:
                values[f"mask{m.index}_file"] = m.file
            values[f"mask{m.index}_goodbits"] = hex(m.goodbits)
            values[f"mask{m.index}_badbits"] = hex(m.badbits)
        for kind, value in p.flags:
            values[f"flag_{kind}"] = _fmt(value)
        if p.no_index:
            values["no_index"] = "1"
        if p.mask_edge_pixels:
            values["mask_edge_pixels"] = p.mask_edge_pixels
        values.update(p.extra)
        lines += [f"{p.name}/{k} = {v}" for k, v in values.items()]
    for b in geom.bad_regions:
        lines.append("")
        for k in ("min_fs", "max_fs", "min_ss", "max_ss", "min_x", "max_x", "min_y", "max_y", "panel"):
            value = getattr(b, k)
            if value is not None:
                lines.append(f"{b.name}/{k} = {_fmt(value) if isinstance(value, float) else value}")
    group_lines = [f"rigid_group_{k} = {','.join(v)}" for k, v in geom.rigid_groups.items()]
    group_lines += [f"rigid_group_collection_{k} = {','.join(v)}" for k, v in geom.rigid_group_collections.items()]
    group_lines += [f"group_{k} = {','.join(v)}" for k, v in geom.groups.items()]
    if group_lines:
        lines += [""] + group_lines
    return "\n".join(lines) + "\n"
