"""The `marl` command: `marl train` and `marl evaluate`.

Flags come from the config dataclasses: every TrainConfig field and every field of the chosen
algorithm's config (two-phase parse: `--algo` first, then its fields), help text = the field
docstring. A MarlError prints one line `error: ...` and exits 2 (with MARL_DEBUG=1 the traceback
of its cause first); Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import re
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from marl.config import TrainConfig
from marl.configio import coerce, field_docs, field_types, from_dict, load_yaml, parse_value, positive, to_plain
from marl.core.errors import DEBUG_ENV, MarlError, check

_RUN, _ALGO, _SELF_PLAY, _PBT = "run.", "algo.", "self_play.", "pbt."
_training: Path | None = None  # the run directory of the `marl train` in progress


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `marl` console script. Returns 0; failures raise SystemExit(2 or 130)."""
    global _training
    argv = list(sys.argv[1:] if argv is None else argv)
    _training = None
    try:
        parser = build_parser(argv)
        ns = parser.parse_args(argv)
        return ns.func(ns)
    except MarlError as e:
        _error_line(e, str(e))
        raise SystemExit(getattr(e, "exit_code", 2)) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        _error_line(e, f"no space left on the disk{where} ({os.strerror(e.errno)}); free space there and continue "
                       "with --resume (the last good checkpoint is kept)")
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:  # its text, if any, says what the interrupted command left
        print(f"\ninterrupted{_interrupt_hint(_training)}{'; ' + str(e) if str(e) else ''}", file=sys.stderr)
        raise SystemExit(130) from None


def _error_line(err: BaseException, line: str) -> None:
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        traceback.print_exception(err)
    print("error: " + " ".join(line.split()), file=sys.stderr)


def _interrupt_hint(run_dir: Path | None) -> str:
    """What an interrupted `marl train` left, true for the state of its run directory."""
    if run_dir is None:
        return ""
    from marl.checkpoint import latest_checkpoint, step_checkpoints
    from marl.rundir import is_run

    if not is_run(run_dir):
        return f"; the run had not started: nothing was written to {run_dir}"
    if latest_checkpoint(run_dir) is None:
        return (f"; {run_dir} has no checkpoint yet, so there is nothing to resume: start the run again "
                "(--overwrite replaces what it wrote)")
    steps = step_checkpoints(run_dir)
    at = f" (step {steps[-1][0]})" if steps else ""
    return f"; the run keeps its last checkpoint{at}; continue with: marl train --resume --run-dir {run_dir}"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=36, width=max(100, shutil.get_terminal_size((120, 24)).columns))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; for `train` the algorithm (from --algo or --config) decides the extra flags."""
    argv = list(argv or [])
    top = argparse.ArgumentParser(prog="marl", description="Multi-agent reinforcement learning on PettingZoo.",
                                  allow_abbrev=False, formatter_class=_Formatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub, argv[1:] if argv[:1] == ["train"] else None)
    _add_evaluate(sub)
    _add_train(sub, argv[1:] if argv[:1] == ["pbt"] else None, pbt=True)
    return top


# ----------------------------------------------------------------------------- train
def _preparse(rest: list[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for opt in ("--algo", "--config", "--run-dir"):
        pre.add_argument(opt)
    pre.add_argument("--resume", nargs="?", const="true")
    return pre.parse_known_args(rest)[0]


def _add_train(sub, rest: list[str] | None, pbt: bool = False) -> None:
    from marl.algos import ALGOS  # importing registers the built-in algorithms

    known = _preparse(rest or [])
    config_file = known.config
    if not config_file and known.resume and parse_value(bool, known.resume, "resume") and known.run_dir:
        saved = Path(known.run_dir) / "config.yaml"  # resuming: the run's own config is the base
        config_file = str(saved) if saved.is_file() else None
    base_run, base_algo = load_run_config(config_file) if config_file else ({}, {})
    algo = known.algo or base_run.get("algo") or TrainConfig.algo
    entry = ALGOS.get(algo) if (known.algo or "algo" in base_run or algo in ALGOS) else None
    resuming = config_file and not known.config
    if base_algo and base_run.get("algo", algo) != algo:
        if not resuming:  # resuming, the trainer refuses the change of algorithm in one line
            print(f"note: --algo {algo} differs from {base_run['algo']} in {config_file}; "
                  f"its {base_run['algo']} hyperparameters are not used", file=sys.stderr)
        base_algo = {}

    if pbt:
        p = sub.add_parser("pbt", help="population-based training of K members on Ray (local or --ray-address)",
                           formatter_class=_Formatter, allow_abbrev=False, description=_PBT_DESCRIPTION, epilog=_env_help())
    else:
        p = sub.add_parser("train", help="train an algorithm on an environment", formatter_class=_Formatter,
                           allow_abbrev=False, description=_train_description(ALGOS), epilog=_env_help())
    p.add_argument("--config", metavar="YAML", help="load a saved config.yaml (run + algorithm); flags override it "
                                                    "(with --resume the run's own config.yaml is the base; see --resume)")
    run_group = p.add_argument_group("run options (TrainConfig)")
    run_flags = _add_fields(run_group, TrainConfig, TrainConfig(), _RUN, set())
    from marl.population.selfplay import SelfPlayConfig

    sp_group = p.add_argument_group("self-play options (SelfPlayConfig; two-player games)")  # marl pbt: parsed to refuse them
    run_flags |= _add_fields(sp_group, SelfPlayConfig, SelfPlayConfig(), _SELF_PLAY, run_flags, hidden=pbt)
    if entry is not None:
        try:
            defaults = entry.make_config()
        except (MarlError, TypeError):
            defaults = None
        group = p.add_argument_group(f"{algo} hyperparameters ({entry.config.__name__})")
        _add_fields(group, entry.config, defaults, _ALGO, run_flags | {"--config", "--help"})
    else:
        p.add_argument_group(f"{algo} hyperparameters", f"'{algo}' is not registered; pass --algo NAME --help")
    base_self_play = dict((load_yaml(config_file) or {}).get("self_play") or {}) if config_file else {}
    if pbt:
        from marl.population.pbt import PBTConfig

        _add_fields(p.add_argument_group("population-based training (PBTConfig)"), PBTConfig, PBTConfig(), _PBT, set())
    p.set_defaults(func=_cmd_pbt if pbt else _cmd_train, _entry=entry, _base_run=base_run, _base_algo=base_algo,
                   _from_config=bool(known.config), _base_self_play=base_self_play)


def load_run_config(path: str) -> tuple[dict, dict]:
    """(run dict, algo dict) of a config.yaml: `train:` (or `run:`) and `algo:` sections, or one flat mapping."""
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise MarlError(f"config file {path} does not hold a mapping", "write `train:` and `algo:` sections")
    run = data.get("train", data.get("run"))
    if isinstance(data.get("algo"), dict) or isinstance(run, dict):
        return dict(run or {}), dict(data.get("algo") or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


def _train_description(algos) -> str:
    lines = ["Train an algorithm on a PettingZoo environment, e.g.",
             "  marl train --algo mappo --env mpe2/simple_spread_v3 --steps 200000 --seed 1 --run-dir runs/spread",
             "", "algorithms (hyperparameter flags appear with --algo NAME --help):"]
    names = algos.names()
    width = max((len(n) for n in names), default=0) + 2
    for name in names:
        e = algos.get(name)
        summary = e.summary or ((e.config.__doc__ or "").strip().splitlines() or [""])[0]
        lines.append(f"  {name:<{width}}{summary}")
    return "\n".join(lines if names else lines[:-1] + ["algorithms: none registered"])


def _env_help() -> str:
    forms: list[str] = []
    names: list[str] = []
    try:
        from marl import envs  # written separately; help must work without it

        forms = list(getattr(envs, "ENV_FORMS", []) or [])
        names = list(envs.names()) if callable(getattr(envs, "names", None)) else []
    except Exception:  # noqa: BLE001 - help text only
        pass
    if not forms:
        forms = [field_docs(TrainConfig).get("env", "")]
    text = "env names (--env):\n" + "\n".join(f"  {f}" for f in forms if f)
    return text + ("\nregistered envs:\n  " + ", ".join(names) if names else "")


def _metavar(tp: Any) -> str:
    name = getattr(tp, "__name__", "")
    table = {"int": "N", "float": "X", "str": "STR", "dict": "K=V,...", "list": "A,B,...", "tuple": "A,B,..."}
    if name in table:
        return table[name]
    text = str(tp).replace("typing.", "")
    if text.startswith("Literal["):
        return "{" + ",".join(str(a) for a in getattr(tp, "__args__", ())) + "}"
    return "|".join(table.get(getattr(a, "__name__", ""), "VALUE") for a in getattr(tp, "__args__", ())) or "VALUE"


def _add_fields(group, cls: type, defaults: Any, prefix: str, taken: set[str], hidden: bool = False) -> set[str]:
    """One flag per dataclass field (kebab-case); a name already taken gets an `--algo-` prefix;
    `hidden`: left out of --help."""
    docs, types, flags = field_docs(cls), field_types(cls), set()
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        opt = "--" + f.name.replace("_", "-")
        opt = "--algo-" + opt[2:] if opt in taken else opt
        tp = types[f.name]
        default = getattr(defaults, f.name) if defaults is not None else f.default
        doc = " ".join((docs.get(f.name) or "").split("\n\n")[0].split())
        if default is not dataclasses.MISSING:
            plain = to_plain(default)
            shown = ",".join(map(str, plain)) if isinstance(plain, list) and plain else \
                plain if isinstance(plain, str) and plain else json.dumps(plain, default=str)
            doc = f"{doc} (default: {shown})".strip()
        kw: dict[str, Any] = dict(dest=prefix + f.name, default=argparse.SUPPRESS,
                                  help=argparse.SUPPRESS if hidden else doc.replace("%", "%%"))
        if tp is bool:
            kw.update(nargs="?", const="true", metavar="BOOL")
        else:
            kw.update(metavar=_metavar(tp))
        group.add_argument(opt, **kw)
        flags.add(opt)
    return flags


_PBT_DESCRIPTION = """Population-based training: K members (each a run directory <run-dir>/member_<i>) train in
parallel on Ray; every --interval env steps the worse members copy the weights and hyperparameters
of better ones and perturb them. Run options and hyperparameters are those of marl train, e.g.
  marl pbt --algo ippo --env builtin/identity --steps 20000 --members 4 --interval 2000 \\
      --hparams "lr=1e-5:1e-2 ent_coef=0:0.05" --run-dir runs/pop"""


def _cmd_pbt(ns: argparse.Namespace) -> int:
    from marl.population.pbt import PBTConfig, format_table, run_pbt

    self_play = sorted("--" + k[len(_SELF_PLAY):].replace("_", "-") for k in vars(ns) if k.startswith(_SELF_PLAY))
    check(not self_play, f"marl pbt does not train self-play members ({', '.join(self_play)})",
          'for a population whose members play each other, give --policies "player_0=ippo player_1=random" --league player_1')
    cfg, algo_cfg, _ = _run_configs(ns)
    types = field_types(PBTConfig)
    pbt = PBTConfig(**{k[len(_PBT):]: parse_value(types[k[len(_PBT):]], v, k[len(_PBT):]) for k, v in vars(ns).items() if k.startswith(_PBT)})
    result = run_pbt(cfg, algo_cfg, pbt)
    print(format_table(result, list(result["members"][0])[3:]))
    return 0


def _run_configs(ns: argparse.Namespace):
    """(TrainConfig, algorithm config, run fields the call sets) from the parsed flags."""
    from marl.algos import ALGOS

    given = vars(ns)
    run_types = field_types(TrainConfig)
    run = dict(ns._base_run)
    run.update({k[len(_RUN):]: parse_value(run_types[k[len(_RUN):]], v, k[len(_RUN):])
                for k, v in given.items() if k.startswith(_RUN)})
    cfg = from_dict(TrainConfig, run)
    entry = ns._entry or ALGOS.get(cfg.algo)
    algo_types = field_types(entry.config)
    base_algo = dict(ns._base_algo)
    if cfg.resume and base_algo:  # the run's own config: a field added since takes the value the run was built with
        base_algo = {**{k: v for k, v in getattr(entry.config, "saved_defaults", {}).items() if k not in base_algo}, **base_algo}
    overrides = {k: coerce(algo_types[k], v, k) if k in algo_types else v for k, v in base_algo.items()}
    overrides.update({k[len(_ALGO):]: parse_value(algo_types[k[len(_ALGO):]], v, k[len(_ALGO):])
                      for k, v in given.items() if k.startswith(_ALGO)})
    algo_cfg = entry.make_config(**overrides)
    cfg = dataclasses.replace(cfg, device=check_device(cfg.device))
    positive("steps", cfg.steps)
    # on --resume, what the resuming call sets: the flags, and a --config file's values
    set_fields = {k[len(_RUN):] for k in given if k.startswith(_RUN)} | (set(ns._base_run) if ns._from_config else set())
    return cfg, algo_cfg, set_fields


def _cmd_train(ns: argparse.Namespace) -> int:
    global _training
    from marl.train import run_dir_for, train

    cfg, algo_cfg, set_fields = _run_configs(ns)
    self_play = _self_play_config(ns, cfg)
    _training = run_dir_for(cfg)
    if self_play.self_play:
        from marl.population.selfplay import train_self_play

        result = train_self_play(cfg, algo_cfg, self_play, set_fields=set_fields)
    else:
        result = train(cfg, algo_cfg, set_fields=set_fields)
    _print_result(result)
    return 0


def _self_play_config(ns: argparse.Namespace, cfg: TrainConfig):
    """The self-play settings: a resumed run's own (its config.yaml) are the base; a flag that
    changes them is refused unless --allow-config-change."""
    from marl.population.selfplay import SelfPlayConfig

    types = field_types(SelfPlayConfig)
    given = {k[len(_SELF_PLAY):]: parse_value(types[k[len(_SELF_PLAY):]], v, k[len(_SELF_PLAY):])
             for k, v in vars(ns).items() if k.startswith(_SELF_PLAY)}
    base = {k: coerce(types[k], v, k) for k, v in ns._base_self_play.items() if k in types}
    if cfg.resume and not cfg.allow_config_change:
        for k, v in given.items():
            old = base.get(k, getattr(SelfPlayConfig(), k))
            if to_plain(v) != to_plain(old):
                raise MarlError(f"--resume: --{k.replace('_', '-')} {_plain(v)} differs from the run's {_plain(old)}, which changes what "
                                "the run learns", "drop the flag, or pass --allow-config-change")
    return from_dict(SelfPlayConfig, {**base, **given})


def _plain(value) -> str:
    value = to_plain(value)
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


# ----------------------------------------------------------------------------- evaluate
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint and print its returns", formatter_class=_Formatter,
                       allow_abbrev=False, description="Run the greedy policy of a checkpoint and print returns.")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="checkpoint file, or a run directory (uses its checkpoints/latest.pt)")
    p.add_argument("--episodes", type=int, default=32, metavar="N", help="episodes to run (default: 32)")
    p.add_argument("--video", default="", metavar="FILE", help="write a video of an episode (.mp4 or .gif)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="run the evaluation episodes of a run with seed S (default: the run's own; "
                        "with the run's --eval-episodes, its logged evaluations are reproduced)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(ns: argparse.Namespace) -> int:
    path = Path(ns.checkpoint)  # a checkpoint file or a run directory: load_checkpoint resolves and checks it
    positive("episodes", ns.episodes)
    device = check_device(ns.device)
    from marl.train import evaluate

    try:
        result = evaluate(str(path), episodes=ns.episodes, video=ns.video, device=device, seed=ns.seed)
    except MarlError as err:  # the returns were computed before the video failed: print them first
        _print_result(getattr(err, "partial", None))
        sys.stdout.flush()
        raise
    _print_result(result)
    return 0


# ----------------------------------------------------------------------------- helpers
def check_device(device: str) -> str:
    """Validate auto|cpu|cuda|cuda:N (MarlError when the accelerator is not there)."""
    from marl.train import resolve_device

    resolve_device(str(device).strip().lower())
    return str(device).strip().lower()


def _print_result(result: Any) -> None:
    if not isinstance(result, dict):
        return
    for key, value in result.items():
        value = to_plain(value)
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value)
        print(f"{key}: {value}")


if __name__ == "__main__":
    raise SystemExit(main())
