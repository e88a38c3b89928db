"""The one error type users see for bad input: its message is a single line."""


class InputError(ValueError):
    """Bad input: names the file (and line), the field and what was expected."""
