"""Decoding a run's one input ahead, while imgconv imports numpy and builds its pipeline.

``imgconv apply photo.jpg ...`` starts a :class:`Prefetch` of ``photo.jpg``
before it imports numpy and the kernel library; :func:`imgconv.batch.process`
takes the picture from it instead of loading the file. Pillow's decoders
release the GIL, so the two overlap: on a 12 MP JPEG the picture is ready
before the pipeline is built. Anything but a plain JPEG (which
:func:`imgconv.opening.decode_into_buffer` decodes straight into memory numpy
views) is copied into an array once the main thread has imported numpy.

A prefetch is only a hint: if decoding fails, or the file changes meanwhile,
:meth:`Prefetch.take` returns None and the caller opens the file itself,
getting its error.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from imgconv.notes import thread_warnings_as_notes
from imgconv.opening import decode_into_buffer, open_image, wide_colour

if TYPE_CHECKING:
    from imgconv.imageio import Picture

#: Largest block of the file handed to Pillow's decoder at once.
MAX_BLOCK = 1 << 24


def _identity(path: str) -> tuple[int, int, int, int] | None:
    """What tells one version of a file from another: device, inode, size, mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Prefetch:
    """:func:`imgconv.imageio.load` of ``path`` in a thread, started at once.

    >>> Prefetch("no-such-file.png", 1000).take("no-such-file.png", 1000) is None
    True
    """

    def __init__(self, path: str, max_pixels: int, gray: bool = False) -> None:
        self.path, self.max_pixels, self.gray = path, max_pixels, gray
        self.identity = _identity(path)
        self.picture: Picture | None = None
        self.taken = False
        self.thread = threading.Thread(target=self._load, name="imgconv-decode", daemon=True)
        self.thread.start()

    def take(self, source: str | bytes, max_pixels: int, gray: bool = False) -> Picture | None:
        """The picture, if it was loaded for these arguments; given once.

        Only if the file is still the one that was decoded (same device,
        inode, size and modification time).
        """
        if (self.taken or source != self.path or max_pixels != self.max_pixels
                or gray != self.gray):
            return None
        self.taken = True
        self.thread.join()
        if self.identity is None or _identity(self.path) != self.identity:
            return None
        return self.picture

    def _load(self) -> None:
        notes: list[str] = []
        with thread_warnings_as_notes(self.path, notes):
            self._decode()
        if self.picture is not None:
            self.picture.notes.extend(n for n in notes if n not in self.picture.notes)

    def _decode(self) -> None:
        try:
            im: Any = open_image(self.path, self.max_pixels)
            if wide_colour(im) is not None:  # read by another library, in the main thread
                im.close()
                return
            if self.identity is not None:
                # Pillow feeds its decoder 64 KiB at a time and takes the GIL back
                # between blocks, which the importing main thread then holds for up
                # to 5 ms each time: up to 16 MiB in one block (a 12 MP JPEG's
                # decode waited 0.11 -> 0.07 s)
                size = min(self.identity[2], MAX_BLOCK)
                im.decodermaxblock = max(im.decodermaxblock, size)
            # the decoding, without the GIL, while numpy is imported: into our
            # own memory when that is simple, else Pillow's
            buffer = decode_into_buffer(im, self.gray)
            if buffer is None:
                im.load()
            from imgconv.imageio import decode  # numpy: the main thread has imported it by now

            self.picture = decode(im, self.path, gray=self.gray, buffer=buffer)
        except Exception:  # the caller opens the file again and reports the error
            self.picture = None
