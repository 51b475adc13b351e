"""The errors imgconv raises for users. Each ``str()`` reads well on its own.

The CLI turns them into one ``error: ...`` line on stderr and the exit code
carried by the class; nothing else in the package prints.
"""

from __future__ import annotations


class ImgconvError(Exception):
    """Base class: something the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(ImgconvError):
    """A bad option value, pipeline or kernel spec, found before any file is touched."""

    exit_code = 2


class KernelError(UsageError):
    """A kernel spec, name or YAML kernel file that cannot be used."""


class ImageError(ImgconvError):
    """An input that cannot be read or an output that cannot be written."""

    exit_code = 1


class PixelLimitError(ImageError):
    """An image with more pixels than ``max_pixels``, refused before it is decoded."""

    @classmethod
    def of(cls, name: str, width: int, height: int, max_pixels: int,
           advice: str = "") -> PixelLimitError:
        """The one message for it: the size, the limit, and how to go past it."""
        return cls(f"{name}: {width}x{height} = {width * height:,} pixels is more than the "
                   f"limit of {max_pixels:,}; raise it with `max_pixels`{advice}")


class ImgconvWarning(UserWarning):
    """Something skipped that the user should hear of (an unreadable kernel folder or file).

    The library issues it with :func:`warnings.warn`; the CLI prints it as one
    ``warning: ...`` line.
    """
