"""The one error type AutoSP reports to users. Its message is a single line that names the
op / shape / flag at fault and the fix; the CLI prints it without a traceback."""


class AutoSPError(Exception):
    pass
