"""The one exception type for problems a user can fix (bad file, bad input, missing weights).

Its message is a single line that says what is wrong and what to do. Commands print it as
``error: <message>`` and exit with status 2 instead of showing a traceback.
"""


class UserError(Exception):
    """A problem with the user's input or files, explained in one line."""
