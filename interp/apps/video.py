"""The run's video: the most playable codec that this OpenCV build can write at the frame size, chosen
before any frame is made. opencv-python wheels carry FFmpeg without the (GPL) H.264 encoder but with VP9,
so a browser-playable WebM is what most installs write; MPEG-4 part 2 (which browsers do not play) is the
last resort."""
import contextlib
import functools
import os
import sys
import tempfile

import cv2
import numpy as np

from ldm.errors import UserError

CODECS = (  # fourcc, file name, what it is; most playable first
    ("avc1", "video.mp4", "H.264 MP4"),
    ("VP90", "video.webm", "VP9 WebM"),
    ("VP80", "video.webm", "VP8 WebM"),
    ("mp4v", "video.mp4", "MPEG-4 part 2 MP4 (not playable in browsers)"),
)
NAMES = tuple(sorted({name for _, name, _ in CODECS}))


@contextlib.contextmanager
def _quiet():
    """OpenCV and its FFmpeg wrapper print to the process's stderr (failed probes, WebM's lack of codec tags),
    past Python and OpenCV's log level: the file descriptor itself is pointed elsewhere meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _write(path: str, fourcc: str, frames, fps: float, size) -> bool:
    """Write `frames` (RGB arrays of `size` = (W, H)); whether OpenCV wrote a non-empty file."""
    with _quiet():
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), float(fps), tuple(size))
    try:
        if not writer.isOpened():
            return False
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return os.path.isfile(path) and os.path.getsize(path) > 0


@functools.lru_cache(maxsize=None)
def codec(size: tuple) -> tuple:
    """(fourcc, file name, description) of the first of CODECS that writes a video of `size` = (W, H) here;
    a UserError when none can (e.g. a side beyond what the encoders take)."""
    with tempfile.TemporaryDirectory() as d:
        black = np.zeros((size[1], size[0], 3), np.uint8)
        for fourcc, name, what in CODECS:
            if _write(os.path.join(d, name), fourcc, [black], 8.0, size):
                return fourcc, name, what
    raise UserError(f"OpenCV cannot write a {size[0]}x{size[1]} video with any of its codecs here "
                    f"({', '.join(c for c, _, _ in CODECS)}): choose a smaller or less elongated --size")


# Matroska (WebM) elements FFmpeg fills with a random number: TrackUID and the tags' TagTrackUID (ID, size 8)
RANDOM_UIDS = (b"\x73\xc5\x88", b"\x63\xc5\x88")
CLUSTER = b"\x1f\x43\xb6\x75"  # the first frame's data: the header ends here


def fixed_uids(data: bytes) -> bytes:
    """A WebM file's bytes with its random track UIDs set to 1, so that the same frames give the same file."""
    header_end = data.find(CLUSTER)
    header = bytearray(data[:header_end if header_end >= 0 else len(data)])
    for element in RANDOM_UIDS:
        at = header.find(element)
        while at >= 0:
            header[at + 3:at + 11] = (1).to_bytes(8, "big")
            at = header.find(element, at + 11)
    return bytes(header) + data[len(header):]


def write_video(path: str, fourcc: str, frames: list, fps: float) -> None:
    """PIL frames as a video at `path`, every frame at the size of the first; a WebM's bytes depend on the
    frames alone (`fixed_uids`)."""
    size = frames[0].size
    arrays = (np.asarray(im if im.size == size else im.resize(size)) for im in frames)
    if not _write(path, fourcc, arrays, fps, size):
        raise UserError(f"OpenCV could not write {path} ({fourcc})")
    if path.endswith(".webm") or fourcc.startswith("VP"):
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(fixed_uids(data))
