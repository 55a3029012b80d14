"""The one exception type for bad input.

A `MicrometsError` means the input (file, manifest, option) is wrong, not the program. The command line prints
its message as one line and exits with code 2; everything computed before it stays on disk.
"""


class MicrometsError(Exception):
    """Bad input: the message is one line that names the file or value at fault."""

    exit_code = 2
