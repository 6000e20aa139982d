"""Checkpoints: plain dicts of tensors and primitives ({model_state, optimizer_state, epoch, config, class_names,
...}), saved byte-reproducibly with ``torch.save`` and read back with ``torch.load(weights_only=True)``, which
refuses pickled objects. Every problem with a checkpoint is a one-line :class:`CheckpointError` naming its file.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from .io import atomic_path
from .models import build_model

CHECKPOINT_KEYS = ("model_state", "optimizer_state", "epoch", "config", "class_names")
TARGET_OF = {"photon_energy": "photon_energy_ev", "clen": "clen_m"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, not a cxlspeaks checkpoint, for another attribute,
    or with weights that do not fit its model."""


def checkpoint_bytes(content: dict) -> bytes:
    """The bytes ``torch.save`` writes for ``content``, serialised in memory: the zip's record names are then
    always ``archive/...`` (saving to a file names them after the file), so equal content gives equal bytes."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | Path, **content) -> None:
    """torch.save a dict of tensors and primitives to ``path``, atomically and byte-reproducibly (serialised in
    memory by :func:`checkpoint_bytes`, then renamed into place)."""
    data = checkpoint_bytes(content)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def rebuild_hint(attribute: str | None) -> str:
    """'; `snakemake --cores 2 results/models/{attribute}/checkpoint.pt` rebuilds it' (empty without attribute)."""
    if not attribute:
        return ""
    return f"; `snakemake --cores 2 results/models/{attribute}/checkpoint.pt` rebuilds it"


def load_checkpoint(path: str | Path, attribute: str | None = None) -> dict:
    """Load a checkpoint with weights_only=True.

    Raises :class:`CheckpointError` (one line naming ``path``) when it is missing (the message names the Snakemake
    target that rebuilds it), not a file, not a torch zip or refused by weights-only loading, not a dict with
    :data:`CHECKPOINT_KEYS` and a ``config`` dict, or for another attribute than ``attribute``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found{rebuild_hint(attribute)}")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint is not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({first})") from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in CHECKPOINT_KEYS):
        raise CheckpointError(f"{path}: not a cxlspeaks checkpoint (needs {', '.join(CHECKPOINT_KEYS)})")
    if not isinstance(checkpoint["config"], dict):
        raise CheckpointError(f"{path}: not a cxlspeaks checkpoint (its config is not a dict)")
    found = checkpoint["config"].get("attribute")
    if attribute is not None and found != attribute:
        raise CheckpointError(f"{path}: checkpoint is for attribute {found!r}, not {attribute!r}")
    return checkpoint


def check_finite_state(state: dict, source: str | Path = "checkpoint") -> None:
    """Refuse a state dict holding a NaN or infinite floating-point tensor (its outputs would be NaN)."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: weight {name} holds NaN or infinite values")


def model_from_checkpoint(checkpoint: dict, source: str | Path = "checkpoint") -> nn.Module:
    """The model of a loaded checkpoint, in eval mode.

    Raises :class:`CheckpointError` naming ``source`` (the checkpoint's path) for an unknown model name, missing
    keys (input_shape, class_names, config.model/loss), no classes, non-finite weights or weights whose names or
    shapes do not fit the model.
    """
    try:
        config = checkpoint["config"]
        n_classes = len(checkpoint["class_names"])
        if n_classes == 0:
            raise CheckpointError(f"{source}: checkpoint has no classes")
        input_shape = tuple(int(n) for n in checkpoint["input_shape"])
        model = build_model(config["model"], input_shape, n_classes if config["loss"] == "ce" else 1)
        check_finite_state(checkpoint["model_state"], source)
        model.load_state_dict(checkpoint["model_state"])
    except KeyError as exc:
        text = str(exc.args[0]) if exc.args else ""
        what = f"names an {text}" if text.startswith("unknown model") else f"has no {text or 'expected key'}"
        raise CheckpointError(f"{source}: checkpoint {what}") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        first = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(f"{source}: weights do not fit the model ({first})") from None
    return model.eval()


def trained_on(checkpoint: dict) -> dict:
    """What a frame model was trained on: ``binned_shape`` [H, W] and ``bin_factor``, and where known the sorted
    ``photon_energy_ev`` and ``clen_m`` values of its training frames. Read from the checkpoint's ``trained_on``
    (written by :func:`cxlspeaks.train.train_attribute`); for older checkpoints from ``input_shape``,
    ``bin_factor`` and, for the photon-energy and camera-length models, their ``class_values``. Missing or
    unusable entries are left out (never guessed)."""
    out: dict = {}
    given = checkpoint.get("trained_on")
    given = given if isinstance(given, dict) else {}
    shape = given.get("binned_shape")
    if shape is None and isinstance(checkpoint.get("input_shape"), (list, tuple)):
        shape = list(checkpoint["input_shape"])[1:]
    try:
        if shape is not None and len(shape) == 2:
            out["binned_shape"] = [int(n) for n in shape]
        factor = given.get("bin_factor", checkpoint.get("bin_factor"))
        if factor is not None:
            out["bin_factor"] = int(factor)
    except (TypeError, ValueError):
        pass
    attribute = checkpoint.get("config", {}).get("attribute") if isinstance(checkpoint.get("config"), dict) else None
    for key in ("photon_energy_ev", "clen_m"):
        values = given.get(key)
        if values is None and TARGET_OF.get(attribute) == key:
            values = checkpoint.get("class_values")
        try:
            values = sorted(float(v) for v in values) if values is not None else []
        except (TypeError, ValueError):
            values = []
        if values:
            out[key] = values
    return out
