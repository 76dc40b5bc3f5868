"""The one exception type of the data layer."""


class DataError(Exception):
    """A dataset (raw or prepared) is missing, malformed or inconsistent.

    Messages are one line naming the file or split and what is wrong, so the CLI can print
    them as they are instead of a traceback.
    """
