"""Layer weights as numpy saves them: a kernel, a multi-channel filter or a layer of filters.

- ``(kH, kW)``: one kernel;
- ``(kH, kW, C_in)``: one multi-channel filter (its slices summed into one map);
- ``(C_out, C_in, kH, kW)``: PyTorch's ``Conv2d.weight`` layout, a layer of ``C_out``
  filters, read as a ``stack`` bank whose members are named ``0 .. C_out-1``.

Biases (:func:`read_bias`) are a number, a list of numbers or a ``.npy`` file of one
value per output map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.errors import KernelError
from imgconv.kernels.model import Kernel, KernelBank
from imgconv.kernels.text import short

#: what a weights file names itself by
WEIGHT_SUFFIXES = (".npy",)


def is_weights_file(spec: str) -> bool:
    """Whether a kernel spec names a numpy weights file (``layer1.npy``)."""
    return spec.strip().lower().endswith(WEIGHT_SUFFIXES)


def read_array(path: str | Path, what: str = "weights") -> NDArray[Any]:
    """A real-number array saved with ``numpy.save`` (no pickles); raises KernelError."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise KernelError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise KernelError(f"{path}: cannot read the {what} file ({exc.strerror or exc})"
                          ) from None
    except ValueError as exc:
        raise KernelError(f"{path}: not a {what} file saved with numpy.save ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        kind = getattr(array, "dtype", type(array).__name__)
        raise KernelError(f"{path}: {what} must be real numbers, got {kind}")
    return array


def load_weights(path: str | Path) -> Kernel | KernelBank:
    """The kernel, filter or layer a ``.npy`` file holds (see the module's shapes).

    Members of a layer are named by their index, so that output maps are ``0 .. C_out-1``.
    """
    name = str(path)
    return from_array(read_array(path), name, source=name)


def from_array(weights: Any, name: str, *, source: str = "array") -> Kernel | KernelBank:
    """Weights of shape (kH, kW), (kH, kW, C_in) or (C_out, C_in, kH, kW) as a kernel or a
    ``stack`` bank.

    >>> layer = from_array(np.zeros((4, 3, 5, 5)), "conv1")
    >>> layer.combine, len(layer.kernels), layer.kernels[0].shape
    ('stack', 4, (5, 5, 3))
    """
    array = np.asarray(weights)
    if array.ndim in (2, 3):
        return Kernel(name, array, source=source)
    if array.ndim != 4:
        raise KernelError(
            f"{short(name)}: weights must be (kH, kW), (kH, kW, C_in) or PyTorch's "
            f"(C_out, C_in, kH, kW), got shape {array.shape}")
    if 0 in array.shape:
        raise KernelError(f"{short(name)}: weights must not be empty, got shape {array.shape}")
    members = tuple(Kernel(str(o), np.transpose(array[o], (1, 2, 0)), source=source)
                    for o in range(array.shape[0]))
    return KernelBank(name, members, "stack",
                      description=f"a layer of {array.shape[0]} filters, "
                                  f"{array.shape[2]}x{array.shape[3]}x{array.shape[1]}",
                      source=source)


def read_bias(value: object, where: Path | None = None) -> tuple[float, ...]:
    """A bias: a number, a list of numbers, ``"0.1,0.2"`` or a ``.npy`` file (relative to
    ``where`` when given); one value per output map, or one for all.

    >>> read_bias("0.5, -1")
    (0.5, -1.0)
    """
    numbers: Any
    if isinstance(value, str) and is_weights_file(value):
        path = Path(value.strip())
        if where is not None and not path.is_absolute():
            path = where / path
        numbers = read_array(path, "bias")
        if numbers.ndim > 1:
            raise KernelError(f"{path}: a bias must hold one value per output map (a 1-D "
                              f"array), got shape {numbers.shape}")
        numbers = numbers.reshape(-1).tolist()
    elif isinstance(value, str):
        try:
            numbers = [float(part) for part in value.split(",")]
        except ValueError:
            raise KernelError(f"`bias` must be a number, numbers separated by commas or a "
                              f".npy file, got {short(value)}") from None
    elif isinstance(value, (list, tuple)):
        numbers = list(value)
    else:
        numbers = [value]
    if not numbers:
        raise KernelError("`bias` must hold at least one number")
    out = []
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, (int, float, np.number)) \
                or not np.isfinite(float(n)):
            raise KernelError(f"`bias` must be finite numbers, got {short(n)}")
        out.append(float(n))
    return tuple(out)


def with_bias(kernel: Kernel | KernelBank, bias: tuple[float, ...]) -> Kernel | KernelBank:
    """``kernel`` with ``bias`` added to its output maps: one value for a kernel, one per
    member (or one for all) of a ``stack`` bank. A bank that combines its members into one
    map takes none (its members' responses are combined after their own biases)."""
    import dataclasses

    if isinstance(kernel, Kernel):
        if len(bias) != 1:
            raise KernelError(f"`bias` has {len(bias)} values, but {short(kernel.name)} "
                              f"gives one map")
        return dataclasses.replace(kernel, bias=kernel.bias + bias[0])
    if kernel.combine != "stack":
        raise KernelError(f"`bias` needs one kernel or a stack bank, not bank "
                          f"{short(kernel.name)}, which combines its members "
                          f"({kernel.combine})")
    count = len(kernel.kernels)
    if len(bias) not in (1, count):
        raise KernelError(f"`bias` has {len(bias)} values, but {short(kernel.name)} gives "
                          f"{count} maps (C_out)")
    values = bias * count if len(bias) == 1 else bias
    members = tuple(dataclasses.replace(k, bias=k.bias + b)
                    for k, b in zip(kernel.kernels, values, strict=True))
    return dataclasses.replace(kernel, kernels=members)
