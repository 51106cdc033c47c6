"""The one exception type genforge raises for problems a user can fix."""


class GenforgeError(Exception):
    """A user-facing error: the message says what was wrong and how to fix it.

    The CLI prints it as one line without a traceback (``--debug`` shows one) and exits 2.
    """
