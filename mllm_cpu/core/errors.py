"""The one error type shown to users as a single line."""


class InputError(Exception):
    """Bad input from the user: a missing or malformed file, an unknown option.

    The message is one line that names the problem; the CLI prints it and exits with 2.
    """
