"""Stage stand-ins shared by the pipeline tests."""
from __future__ import annotations

from unseen.engine.stages import Inpainter


class KeepInpainter(Inpainter):
    """Returns the frame unchanged (for tests of masks and prompts, or of objects blurred, not removed)."""

    def inpaint(self, request):
        return request.entries[request.target].frame.image

    cheap = inpaint
