"""The one exception type a command raises for bad input: the CLI prints it as one line and exits 2."""


class CLIError(Exception):
    """A problem with the user's input (file, argument, data), reported without a stack trace.

    The message names the file (and line, when there is one) and what is wrong with it.
    """
