"""Environments by name: the only package that imports environment libraries. It lives in the
repository's envs/ folder and imports as `marl.envs` (pyproject.toml, marl/__init__.py).

    from marl import envs
    env = envs.make("mpe2/simple_spread_v3", N=3)        # a PettingZoo ParallelEnv
    fn = envs.make_factory("builtin/grid", max_steps=10)  # picklable, for worker processes

Turn-based (AEC) envs come back as a `TurnBasedParallel` (one move per step), gymnasium
envs as one-agent or tuple-space adapters (`marl.envs.adapters`).
"""
from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import warnings
from typing import Any, Callable

from pettingzoo import AECEnv, ParallelEnv

from marl.envs.builtin import BUILTINS
from marl.envs.turn_based import TurnBasedParallel
from marl.core.errors import DEBUG_ENV, MarlError, first_line
from marl.core.registry import Registry

ENV_FORMS = [
    "builtin/<name>                 built-in small envs (see the list of names)",
    "mpe2/<module>                  MPE, e.g. mpe2/simple_spread_v3 (continuous_actions=False unless given)",
    "pettingzoo.<family>/<module>   e.g. pettingzoo.sisl/pursuit_v5; AEC-only games (pettingzoo.classic/connect_four_v3) step one move at a time",
    "gym/<id>                       a gymnasium env as one agent 'agent_0', e.g. gym/CartPole-v1",
    "lbforaging/<id>                level-based foraging, e.g. lbforaging/Foraging-8x8-2p-3f-v3 (pip install 'marl[lbf]')",
    "module.path:factory            factory(**kwargs) returning a PettingZoo ParallelEnv or AECEnv",
    "<registered name>              added with envs.register() or the 'marl.envs' entry-point group",
]
ENTRY_POINT_GROUP = "marl.envs"
FAMILY_EXTRAS = ("sisl", "butterfly", "classic")  # PettingZoo families with a marl extra (pyproject.toml)
_ENV_MODULE = re.compile(r"[A-Za-z_]+_v[0-9]+")
_REGISTRY: Registry[Callable[..., Any]] = Registry("env")
for _name, _factory in BUILTINS.items():
    _REGISTRY.register(f"builtin/{_name}", _factory)


def register(name: str, factory: Callable[..., Any] | None = None, *, overwrite: bool = False):
    """Register `factory(**kwargs) -> ParallelEnv | AECEnv` under `name` (a decorator when factory is None)."""
    return _REGISTRY.register(name, factory, overwrite=overwrite)


def names() -> list[str]:
    """Registered and built-in names plus those of the 'marl.envs' entry-point group."""
    return sorted(set(_REGISTRY.names()) | set(_entry_points()))


def make_factory(name: str, **kwargs: Any) -> Callable[[], ParallelEnv]:
    """A zero-argument callable building the env; the name is checked now. Picklable whenever
    the underlying factory is (everything but lambdas/closures passed to register()).
    The name is kept as `factory.env_name`."""
    factory = functools.partial(_build, _resolve(name), name, kwargs)
    factory.env_name = name  # type: ignore[attr-defined]
    return factory


def make(name: str, **kwargs: Any) -> ParallelEnv:
    """Build the env `name` (see ENV_FORMS) as a PettingZoo ParallelEnv."""
    return make_factory(name, **kwargs)()


# ---------------------------------------------------------------- building (module-level: picklable)


def _build(builder: Callable[..., Any], name: str, kwargs: dict) -> ParallelEnv:
    try:
        env = builder(**kwargs)
    except MarlError:
        raise
    except Exception as e:  # noqa: BLE001 - the factory is the user's (or an env library's) code: name it
        if isinstance(e, TypeError) and "unexpected keyword argument" in str(e):
            raise MarlError(f"env '{name}': {e}", "check the keyword arguments the env accepts") from e
        raise MarlError(f"the factory of env '{name}' raised {type(e).__name__}: {first_line(e)}",
                        f"fix the factory or its --env-kwargs {kwargs}; {DEBUG_ENV}=1 shows the traceback") from e
    if isinstance(env, ParallelEnv):
        return env
    if isinstance(env, AECEnv):
        return TurnBasedParallel(env)
    raise MarlError(
        f"env factory for '{name}' returned {type(env).__name__}, not a PettingZoo ParallelEnv or AECEnv",
        "return a ParallelEnv/AECEnv (gymnasium envs: use gym/<id> or marl.envs.adapters)",
    )


def _mpe2(module: str, **kwargs: Any) -> ParallelEnv:
    # Discrete actions skip the OrderEnforcing/AssertOutOfBounds wrappers of module.parallel_env
    # and the observation aec_to_parallel builds and drops for every agent (see CycleParallel):
    # same observations, rewards, flags and state (tests/test_envs.py), and it passes
    # parallel_api_test. Continuous actions keep the standard env, whose ClipOutOfBounds
    # wrapper clips actions (raw_env does not).
    from marl.envs.adapters import CycleParallel

    kwargs.setdefault("continuous_actions", False)
    mod = importlib.import_module(module)
    env = mod.parallel_env(**kwargs) if kwargs["continuous_actions"] else CycleParallel(mod.raw_env(**kwargs))
    # mpe2's SimpleEnv.state() is by definition the concatenation of every agent's observe():
    # the runner may build it from the observations it already has (saves ~25% per step).
    env.state_is_concat_obs = True
    return env


def _import_quietly(module: str) -> Any:
    """Import an env module without PettingZoo's "old creation API" DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(module)


def _pettingzoo(module: str, **kwargs: Any) -> ParallelEnv:
    mod = _import_quietly(module)
    if hasattr(mod, "parallel_env"):
        return mod.parallel_env(**kwargs)
    return TurnBasedParallel(without_checks(mod.env(**kwargs)))


def without_checks(env: AECEnv) -> AECEnv:
    """`env` past its outer OrderEnforcing and AssertOutOfBounds wrappers (PettingZoo's
    classic games: module.env() = OrderEnforcing(AssertOutOfBounds(TerminateIllegal(raw_env)))).
    They only check the caller: TurnBasedParallel resets before stepping and VecEnv checks
    that the acting agents' actions lie in their ranges. The wrappers that change the game (an illegal
    move ends it with a penalty) stay. Same observations, rewards and flags (tests/test_envs.py);
    a move costs ~15 % less on connect four."""
    from pettingzoo.utils.wrappers import AssertOutOfBoundsWrapper, OrderEnforcingWrapper

    while isinstance(env, (OrderEnforcingWrapper, AssertOutOfBoundsWrapper)):
        env = env.env
    return env


def _gym(env_id: str, wrappers: str | list[str] = (), **kwargs: Any) -> ParallelEnv:
    """gymnasium.make(env_id, **kwargs) as one agent, inside the `gymnasium.wrappers` named by
    `wrappers`, innermost first: "NormalizeObservation+FrameStackObservation:4" (`+` between
    wrappers, `:` before each positional argument) or a list of such names."""
    import gymnasium

    from marl.envs.adapters import GymParallel

    env = gymnasium.make(env_id, **kwargs)
    for name, args in gym_wrappers(wrappers):
        env = getattr(gymnasium.wrappers, name)(env, *args)
    return GymParallel(env)


def gym_wrappers(wrappers: str | list[str]) -> list[tuple[str, list[Any]]]:
    """(class name in gymnasium.wrappers, positional arguments) for each wrapper of `wrappers`
    (see `_gym`); an unknown name is a one-line MarlError with the close matches."""
    import gymnasium
    import yaml

    known = [n for n in dir(gymnasium.wrappers) if isinstance(getattr(gymnasium.wrappers, n), type)
             and issubclass(getattr(gymnasium.wrappers, n), gymnasium.Wrapper)]
    out = []
    for item in wrappers.split("+") if isinstance(wrappers, str) else wrappers:
        name, *args = str(item).strip().split(":")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise MarlError(f"unknown gymnasium wrapper '{name}'", f"{'did you mean ' + ', '.join(close) + '? ' if close else ''}"
                            "pass --env-kwargs wrappers=Name+Name:arg with classes of gymnasium.wrappers")
        out.append((name, [yaml.safe_load(a) for a in args]))
    return out


def _lbforaging(env_id: str, **kwargs: Any) -> ParallelEnv:
    import gymnasium
    import lbforaging  # noqa: F401  (registers the Foraging-* ids)

    from marl.envs.adapters import TupleParallel, lbf_split_end

    kwargs.setdefault("disable_env_checker", True)  # the checker warns on the per-agent reward list
    return TupleParallel(gymnasium.make(env_id, **kwargs), split_end=lbf_split_end)


def _target(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return functools.reduce(getattr, attr.split("."), importlib.import_module(module))


def _from_target(target: str, **kwargs: Any) -> Any:
    return _target(target)(**kwargs)


# ---------------------------------------------------------------- resolving names (errors early)


def _resolve(name: str) -> Callable[..., Any]:
    """The builder for `name`, or a one-line MarlError."""
    if name in _REGISTRY:
        return _REGISTRY.get(name)
    prefix, _, rest = name.partition("/")
    if rest and prefix == "mpe2":
        return functools.partial(_mpe2, _find_module("mpe2", rest, prefix))
    if rest and prefix.startswith("pettingzoo."):
        return functools.partial(_pettingzoo, _find_module(prefix, rest, prefix))
    if rest and prefix == "gym":
        return functools.partial(_gym, _find_gym_id(rest, name))
    if rest and prefix == "lbforaging":
        try:
            import lbforaging  # noqa: F401
        except ImportError as e:
            raise MarlError(f"env '{name}' needs lbforaging, which is not installed", "pip install 'marl[lbf]'") from e
        return functools.partial(_lbforaging, _find_gym_id(rest, name))
    if ":" in name and "/" not in name.partition(":")[0]:
        return functools.partial(_from_target, _check_target(name, name))
    entry = _entry_points().get(name)
    if entry is not None:
        return functools.partial(_from_target, _check_target(f"{entry.module}:{entry.attr}", name))
    raise _unknown(name, "env", names() + [f"mpe2/{m}" for m in _env_modules("mpe2")])


def _unknown(name: str, what: str, candidates: list[str]) -> MarlError:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    forms = ", ".join(form.split("  ")[0] for form in ENV_FORMS)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return MarlError(f"unknown {what} '{name}'", f"{hint}accepted forms: {forms}")


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _env_modules(package: str) -> list[str]:
    """Env module names (`<name>_v<k>`) of an installed package, found without importing them."""
    parts = package.split(".")
    spec = importlib.util.find_spec(parts[0])
    if spec is None or not spec.submodule_search_locations:
        return []
    paths = [os.path.join(p, *parts[1:]) for p in spec.submodule_search_locations]
    return sorted(m.name for m in pkgutil.iter_modules(paths) if _ENV_MODULE.fullmatch(m.name))


def _find_module(package: str, module: str, prefix: str) -> str:
    """`package.module` once it is known to import; else a MarlError with the close matches."""
    available = _env_modules(package)
    if module not in available:
        family = package.rpartition(".")[2]
        if family in ("mpe", "magent"):
            fix = f"use mpe2/{module}" if family == "mpe" else "MAgent moved to the magent2 package"
            raise MarlError(f"env '{prefix}/{module}': {package} is no longer part of PettingZoo", fix)
        same = [m for m in available if m.rsplit("_v", 1)[0] == module.rsplit("_v", 1)[0]]
        if same:
            raise MarlError(f"env '{prefix}/{module}' is not in the installed {package}", f"use {prefix}/{same[-1]}")
        if not available:
            raise MarlError(f"env '{prefix}/{module}': no env modules found in '{package}'",
                            "check the family name, e.g. pettingzoo.sisl, pettingzoo.butterfly, pettingzoo.classic")
        raise _unknown(f"{prefix}/{module}", "env", [f"{prefix}/{m}" for m in available])
    try:
        _import_quietly(f"{package}.{module}")
    except ImportError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        family = package[len("pettingzoo."):] if package.startswith("pettingzoo.") else ""
        fix = f"pip install 'marl[{family}]'" if family in FAMILY_EXTRAS else \
            f"pip install 'pettingzoo[{family}]'" if family else f"pip install {package}"
        raise MarlError(f"cannot import env '{prefix}/{module}': {first}", fix) from e
    return f"{package}.{module}"


def _find_gym_id(env_id: str, name: str) -> str:
    import gymnasium

    module, colon, bare = env_id.rpartition(":")
    if colon:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MarlError(f"env '{name}': cannot import '{module}'", f"install the package that provides {module}") from e
    registry = gymnasium.envs.registration.registry
    if (bare if colon else env_id) not in registry:
        prefix = name[: len(name) - len(env_id)]
        raise _unknown(name, "gymnasium env", [prefix + k for k in registry])
    return env_id


def _check_target(target: str, name: str) -> str:
    try:
        factory = _target(target)
    except (ImportError, AttributeError) as e:
        raise MarlError(f"env '{name}': cannot load '{target}' ({e})", "give an importable module.path:factory") from e
    if not callable(factory):
        raise MarlError(f"env '{name}': '{target}' is not callable", "point at a function or class that builds the env")
    return target


__all__ = ["ENV_FORMS", "gym_wrappers", "make", "make_factory", "names", "register"]
