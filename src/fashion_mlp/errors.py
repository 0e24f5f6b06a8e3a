"""The one exception the CLI turns into a one-line message instead of a traceback."""


class PipelineError(Exception):
    """A problem the user can fix: a bad param, a missing or corrupt file, an unreachable source.

    The message names the culprit (file, param key, value) and, where possible, what to do.
    """
