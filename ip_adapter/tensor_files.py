"""Reading tensor files without ever running code from them.

`.safetensors` is read with safetensors; pickled checkpoints (`.bin/.pt/.pth/.ckpt`)
only with `torch.load(weights_only=True)`, which refuses anything but tensors and
plain containers. TorchScript archives are refused too (loading them runs code).
Every failure becomes the caller's error type with the file's name in it.

Both are read lazily: the tensors are memory-mapped copy-on-write (safetensors
always does this on the CPU; `torch.load(mmap=True)` for the zip format every
`torch.save` since 1.6 writes), so reading costs a header parse, no copy, and
pages come in only when a weight is used or moved to its device.
"""

from __future__ import annotations

import os
import pickle

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def read_tensor_file(path: str | os.PathLike[str], *, what: str, error: type[Exception], safer: str) -> object:
    """The deserialised contents of `path` (usually a dict of tensors), on the CPU.

    `what` names the file's role in messages ("IP-Adapter file"); `safer` says
    which release to use instead when a pickle is refused.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise error(f"{what} not found: {path}")
    try:
        if name.lower().endswith(PICKLE_SUFFIXES):
            return _load_pickle(path)
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    except pickle.UnpicklingError as exc:
        raise error(
            f"Refused to load '{name}': it is a pickle that contains more than tensors "
            f"({str(exc).splitlines()[0][:200]}). Pickles can run code when loaded; {safer}"
        ) from None
    except Exception as exc:  # noqa: BLE001 -- safetensors and zip errors have many types
        if "TorchScript" in str(exc):
            raise error(
                f"'{name}' is a TorchScript archive; it is not read because loading it runs code. {safer}"
            ) from None
        raise error(
            f"Could not read {what} '{name}': {type(exc).__name__}: {str(exc)[:200]}. "
            "The file is truncated or not a checkpoint; download it again."
        ) from None


def _load_pickle(path: str) -> object:
    """`torch.load(weights_only=True)`, memory-mapped when the file is in the zip format."""
    import zipfile

    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
