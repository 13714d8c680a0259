"""The one exception type for a user's mistake.

Anything a user can get wrong (a name, a value, a file, a cluster that is not there) raises :class:`UserError`
or a subclass; the command line turns it into one red line on stderr and exit code 2, never a traceback
(``orchestrator.cli.common.user_errors``). Everything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A user mistake; the message is one line meant for the user."""
