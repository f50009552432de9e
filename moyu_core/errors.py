"""One exception type for every error a user can cause: the CLI prints it as one line, the app
shows it as a friendly message."""


class MoyuError(Exception):
    """A clear, user-facing error (bad input, unknown name, busy database...)."""
