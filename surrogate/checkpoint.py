"""Checkpoints of surrogate models: plain types only, atomic writes, checked loads.

A checkpoint is a ``dict`` of plain Python types and tensors, so
``torch.load(path, weights_only=True)`` reads it without running any code:

* ``format``: :data:`FORMAT` (bumped when the layout changes),
* ``model``: ``{"class": "Surrogate", "kwargs": {...}}`` (plain init arguments),
* ``state_dict``: weights and normaliser statistics (buffers),
* ``config``: the training config, ``store``: the signature of the store it
  was trained on (:meth:`surrogate.data.StoreInfo.signature`), ``versions``,
* ``member``, ``epoch``, ``metrics``; a *training-state* checkpoint adds
  ``optimizer`` and ``rng`` for an exact resume.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

import torch

from solver.errors import ModelError

FORMAT = "slipstream.surrogate/1"


def versions() -> dict[str, str]:
    """Versions of the packages a checkpoint depends on."""
    out = {"torch": str(torch.__version__)}  # TorchVersion is not a plain type
    for dist in ("slipstream", "numpy", "zarr"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file, then rename): a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "versions": versions(), **payload}, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format.

    Raises:
        ModelError: missing, unreadable, or not a Slipstream surrogate checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or holding non-plain objects
        raise ModelError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(f"{path}: not a Slipstream surrogate checkpoint of format {FORMAT!r} (found {found!r})")
    for key in ("model", "state_dict", "config", "store"):
        if key not in ckpt:
            raise ModelError(f"{path}: checkpoint lacks '{key}'")
    return ckpt


def read_model_json(model_dir: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """The ``model.json`` of a model directory, checked to be of format ``fmt``.

    Args:
        what: the kind of model, for the message (``a surrogate``, ``a forecast``...).

    Raises:
        ModelError: no such directory or file, unreadable JSON, another format.
    """
    import json

    model_dir = Path(model_dir)
    meta_path = model_dir / "model.json"
    if not meta_path.is_file():
        raise ModelError(f"{model_dir}: not a trained model directory (no model.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{meta_path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(f"{model_dir}: a {found!r} model, not {what} ({fmt!r})")
    return meta
