"""The one exception family for user mistakes.

A `CaiError` is caught once, in the CLI, and printed as one line with exit code 2. Anything else
is a bug and keeps its traceback.
"""


class CaiError(Exception):
    """A mistake in the user's input (a file, a field, an option), described in one line."""

