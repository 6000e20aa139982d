"""Live operation on the DECTRIS Eiger stream: replay a file as a DCU would (:func:`replay`), score the stream
with worker processes and one collector (:func:`live`), and watch it in a browser (:mod:`.monitor`)."""

from .replay import replay
from .run import live

__all__ = ["live", "replay"]
