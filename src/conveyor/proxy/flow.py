"""Reasons for which a client connection stops being read (a bit mask).

Reading resumes only when every reason is gone, so that e.g. the upstream draining its write
buffer does not resume a client that is also paused because it pipelined requests.
"""

from __future__ import annotations

from typing import Final

PAUSE_PIPELINE: Final = 1  # a pipelined request waits for the one before it
PAUSE_PENDING: Final = 2  # request bytes are buffered while no upstream connection is ready
PAUSE_UPSTREAM: Final = 4  # the upstream's write buffer is above its high-water mark
