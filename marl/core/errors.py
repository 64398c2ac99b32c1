"""User-facing errors: one line naming the problem and the fix. The CLI prints them and exits 2."""


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
