"""The exception for pose problems a user can fix (a bad image, keypoint array or model file).

Its message is one line that says what is wrong and what to do; the commands print it as
``error: <message>`` and exit with status 2. It is a ValueError, and pose/ defines it itself so that
it depends on nothing of diffusion.
"""


class PoseError(ValueError):
    """A problem with the user's pose input or files, explained in one line."""
