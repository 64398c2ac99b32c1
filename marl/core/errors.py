"""User-facing errors: one line naming the problem and the fix. The CLI prints them and exits 2;
with MARL_DEBUG=1 in the environment it prints the traceback of the error's cause first."""

DEBUG_ENV = "MARL_DEBUG"


class MarlError(Exception):
    """A user mistake (bad flag, unknown name, incompatible choice). Never a bug."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class EnvStepError(MarlError):
    """The environment raised while being stepped."""


def check(cond: bool, problem: str, fix: str | None = None) -> None:
    """Raise MarlError(problem, fix) unless cond holds."""
    if not cond:
        raise MarlError(problem, fix)


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut at a word boundary (with "...") when longer
    than `limit` characters; the exception's type name when it has no message."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0].strip()
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
