"""libspng's C decoder, called through ctypes so that a batch decodes without the GIL.

``pyspng`` wraps libspng with pybind11 and keeps the interpreter lock while it decodes:
for one 32×32 PNG on the event loop that is what we want (~45 µs, no wait to get the
lock back), but 64 images of a JSON request decoded that way stall the event loop for
~3 ms. Its extension module exports libspng's C API, so the same decoder is called here
twice over: through ``ctypes.CDLL``, which releases the lock around each call, for
batches on the decoding threads, and through ``ctypes.PyDLL``, which keeps it, for a
single image on the event loop. Either way the pixels land straight in the caller's
array, with the output format and flags ``pyspng.load`` uses, so they are its pixels.

When the symbols are missing (a ``pyspng`` built otherwise), ``library()`` returns
None and callers decode with Pillow (``pyspng.load`` accepts streams Pillow refuses).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyspng import _pyspng_c

SPNG_OK = 0
_FORMATS = {1: _pyspng_c.SPNG_FMT_G8, 3: _pyspng_c.SPNG_FMT_RGB8}  # channels → output format


@dataclass(frozen=True)
class Spng:
    """libspng's entry points: ``decode_without_lock`` releases the interpreter lock."""

    context_new: Callable[..., Any]
    set_buffer: Callable[..., Any]
    decode_without_lock: Callable[..., Any]
    decode_with_lock: Callable[..., Any]
    context_free: Callable[..., Any]

    def decode_into(
        self, data: bytes, address: int, size: int, channels: int, *, lock: bool
    ) -> bool:
        """Decode ``data`` into ``size`` bytes at ``address``; False if libspng refused it.

        The caller has checked the header: 8-bit, not interlaced, ``channels`` of the
        model's size, so ``size`` bytes is exactly the decoded image.
        """
        context = self.context_new(0)
        if not context:
            return False
        try:
            if self.set_buffer(context, data, len(data)) != SPNG_OK:
                return False
            decode = self.decode_with_lock if lock else self.decode_without_lock
            return bool(decode(context, address, size, _FORMATS[channels], 0) == SPNG_OK)
        finally:
            self.context_free(context)


@functools.cache
def library() -> Spng | None:
    """libspng from pyspng's extension module, or None if it does not export the C API."""
    try:
        releasing, holding = ctypes.CDLL(_pyspng_c.__file__), ctypes.PyDLL(_pyspng_c.__file__)
        functions = (
            holding.spng_ctx_new,
            holding.spng_set_png_buffer,
            releasing.spng_decode_image,
            holding.spng_decode_image,
            holding.spng_ctx_free,
        )
    except (OSError, AttributeError):
        return None
    context_new, set_buffer, decode_without_lock, decode_with_lock, context_free = functions
    context_new.argtypes, context_new.restype = [ctypes.c_int], ctypes.c_void_p
    set_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    set_buffer.restype = ctypes.c_int
    for decode in (decode_without_lock, decode_with_lock):
        decode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
        ]
        decode.restype = ctypes.c_int
    context_free.argtypes, context_free.restype = [ctypes.c_void_p], None
    return Spng(*functions)
