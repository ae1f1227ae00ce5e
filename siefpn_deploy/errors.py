"""The one exception type the CLI turns into a one-line error (no traceback)."""


class UserError(Exception):
    """Bad input from the user: a file, an argument or a config value.

    The message must name the culprit (the path, the key, the argument) and fit on one line.
    """
