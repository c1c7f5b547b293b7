"""Copy a trained model directory for shipping: members with half-precision weights, no training state.

``python -m surrogate.ship MODEL/ DEST/`` writes ``DEST/model.json``,
``DEST/train_config.json`` and ``DEST/member_k.pt`` whose large weight tensors
are float16 (about half the bytes; normaliser statistics and small tensors stay
float32). ``load_state_dict`` casts them back to float32 on load, so a shipped
model is used like any other; evaluate the shipped copy, not the original,
when reporting its figures.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from . import checkpoint
from .uncertainty import load_model

# tensors with more entries than this are stored in half precision
HALF_ABOVE = 4096


def ship(model_dir: str | Path, dest: str | Path, half_above: int = HALF_ABOVE) -> list[Path]:
    """Write the compact copy (tensors of more than ``half_above`` entries in float16); returns the files."""
    model_dir, dest = Path(model_dir), Path(dest)
    ensemble = load_model(model_dir)  # refuses a broken directory before anything is written
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ensemble.meta["members"]:
        ckpt = checkpoint.load(model_dir / name)
        state = {k: (v.half() if v.is_floating_point() and v.numel() > half_above and "norm" not in k else v)
                 for k, v in ckpt["state_dict"].items()}
        payload = {k: v for k, v in ckpt.items() if k not in ("format", "versions", "state_dict")}
        checkpoint.save(dest / name, {**payload, "state_dict": state, "half_precision_above": half_above})
        written.append(dest / name)
    for name in ("model.json", "train_config.json"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, dest / name)
            written.append(dest / name)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m surrogate.ship MODEL_DIR DEST_DIR")
    for path in ship(sys.argv[1], sys.argv[2]):
        print(path)
