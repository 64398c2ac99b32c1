"""Population-based training (Jaderberg et al. 2017) on Ray Tune: K members train in parallel,
each a `marl.trainer.Trainer` driven for `interval` env steps per report; Tune's
PopulationBasedTraining scheduler makes the worse members copy the weights and hyperparameters
of better ones (exploit) and perturb the hyperparameters (explore).

    result = run_pbt(TrainConfig(env="builtin/identity", algo="ippo", steps=20000, run_dir="runs/pop"),
                     algo_cfg, PBTConfig(members=4, interval=2000, hparams="lr=1e-5:1e-2 ent_coef=0:0.05"))

A member is a run directory `<population>/member_<i>` (config.yaml, metrics.jsonl, atomic
checkpoints). Its Tune checkpoint holds the run's `latest.pt`. A member that restarts from a
checkpoint (an exploit: a better member's; a restart after its worker died: its own) resumes
its run directory from that checkpoint with its new algorithm config (`allow_config_change`:
the change is recorded in the member's config_changes.yaml, and the learner's optimiser takes
the config's lr on load). Exploits and restarts are appended to the member's `events.jsonl`;
the command writes `population.json` (members, hyperparameters, returns, events) at the end.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marl import envs
from marl.algos import ALGOS
from marl.checkpoint import load_checkpoint, save_step_checkpoint
from marl.config import TrainConfig
from marl.configio import from_dict, to_dict
from marl.core.errors import MarlError, check

METRIC = "return"
MARKER = ".marl-population"


@dataclass(frozen=True)
class PBTConfig:
    """Population-based training settings (`marl pbt`)."""

    members: int = 4
    """Members of the population (K), trained in parallel."""
    interval: int = 0
    """Env steps between two reports of a member; at each the worse members exploit the better ones (0: steps / 10)."""
    hparams: str = "lr"
    """Algorithm hyperparameters PBT explores, with ranges: 'lr=1e-5:1e-2 ent_coef=0:0.05' (bare name: 0.25x..4x its value)."""
    init: str = ""
    """Initial values per member, cycled over the members: 'lr=1e-7,1e-3' (default: drawn from the ranges)."""
    quantile: float = 0.25
    """Fraction of members that exploit (the bottom) and that are copied (the top)."""
    resample_probability: float = 0.25
    """Probability that explore draws a hyperparameter afresh from its range instead of scaling it by 0.8 or 1.2."""
    ray_address: str = ""
    """Address of an existing Ray cluster (host:port or ray://host:port); empty: start a local Ray for this command."""
    num_cpus: int = 0
    """CPUs of the local Ray (0: one per member, at most this machine's); each member uses one."""
    max_failures: int = 3
    """Restarts of a member whose worker died, from its last checkpoint, before the population stops."""
    league: str = ""
    """Self-play league: a frozen --policies slot (e.g. player_1=random) that plays, from each report on, another member's learner."""


# -- input checks (all before Ray starts) ------------------------------------------------------
def parse_hparams(text: str, algo_cfg) -> dict[str, tuple[float, float]]:
    """{name: (low, high)} from 'lr=1e-5:1e-2 ent_coef' (a bare name: 0.25x..4x its value in
    `algo_cfg`); a name the algorithm does not have, or that is not a number, is a MarlError."""
    fields = {f.name: f for f in dataclasses.fields(algo_cfg)}
    algo = type(algo_cfg).__name__
    out = {}
    for item in text.replace(",", " ").split():
        name, _, rng = item.partition("=")
        numeric = [n for n, f in fields.items() if isinstance(getattr(algo_cfg, n), float) and not isinstance(getattr(algo_cfg, n), bool)]
        check(name in fields, f"--hparams: {algo} has no hyperparameter '{name}'", f"pick from the numeric ones: {', '.join(numeric)}")
        check(name in numeric, f"--hparams: {name} of {algo} is not a real number ({getattr(algo_cfg, name)!r})",
              f"pick from the numeric ones: {', '.join(numeric)}")
        if rng:
            try:
                low, high = (float(x) for x in rng.split(":"))
            except ValueError:
                raise MarlError(f"--hparams: range '{rng}' of {name} is not LOW:HIGH", f"write e.g. {name}=1e-5:1e-2") from None
        else:
            value = getattr(algo_cfg, name)
            low, high = (value / 4, value * 4) if value > 0 else (0.0, 1.0)
        check(math.isfinite(low) and math.isfinite(high) and 0 <= low < high, f"--hparams: range {low}:{high} of {name} is empty or negative",
              f"write LOW:HIGH with 0 <= LOW < HIGH, e.g. {name}=1e-5:1e-2")
        out[name] = (low, high)
    check(bool(out), "--hparams names no hyperparameter", "e.g. --hparams lr=1e-5:1e-2")
    return out


def parse_init(text: str, ranges: dict) -> dict[str, list[float]]:
    """{name: [value, ...]} from 'lr=1e-7,1e-3 ent_coef=0.01'; every name must be in --hparams."""
    out = {}
    for item in text.split():
        name, _, values = item.partition("=")
        check(name in ranges, f"--init: '{name}' is not one of the --hparams ({', '.join(ranges)})", f"add {name} to --hparams or drop it from --init")
        try:
            out[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise MarlError(f"--init: '{values}' of {name} is not a list of numbers", f"write e.g. {name}=1e-7,1e-3") from None
    return out


def check_address(address: str, timeout: float = 5.0) -> None:
    """MarlError when nothing listens at a Ray address (host:port or ray://host:port)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    check(bool(host) and port.isdigit(), f"--ray-address '{address}' is not host:port", "e.g. --ray-address 10.0.0.1:6379 (ray start --head prints it)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise MarlError(f"--ray-address {address} cannot be reached ({err.strerror or err})",
                        "start the cluster (ray start --head) or check the address; omit --ray-address for a local Ray") from None


def check_pbt(cfg: TrainConfig, algo_cfg, pbt: PBTConfig) -> tuple[dict, dict, int]:
    """(ranges, initial values, interval) after every check of the input, in this process."""
    check(pbt.members >= 2, f"--members must be at least 2, got {pbt.members}", "pass --members 2 or more")
    check(0 < pbt.quantile <= 0.5, f"--quantile must be in (0, 0.5], got {pbt.quantile}", "e.g. --quantile 0.25")
    check(0 <= pbt.resample_probability <= 1, f"--resample-probability must be in [0, 1], got {pbt.resample_probability}", "e.g. 0.25")
    check(pbt.max_failures >= 0, f"--max-failures must be >= 0, got {pbt.max_failures}", "e.g. --max-failures 3")
    check(not cfg.resume, "marl pbt does not resume a population", "start it in a new --run-dir (or pass --overwrite)")
    if cfg.policies:
        from marl import agentmap

        entries = dict(agentmap.parse(cfg.policies))
        check(cfg.algo in entries.values(), f"--policies '{cfg.policies}' has no learner of --algo {cfg.algo}, whose hyperparameters PBT explores",
              f"name {cfg.algo} for one team, e.g. player_0={cfg.algo}")
        names = {p.strip("*?[]"): c for p, c in entries.items()}
        check(not pbt.league or (pbt.league in names and not agentmap.is_learner(names[pbt.league])),
              f"--league {pbt.league}: not a frozen slot of --policies '{cfg.policies}'", "name a slot whose choice is random or a checkpoint")
    else:
        check(not pbt.league, f"--league {pbt.league} needs --policies", 'e.g. --policies "player_0=ippo player_1=random" --league player_1')
    ranges = parse_hparams(pbt.hparams, algo_cfg)
    init = parse_init(pbt.init, ranges)
    interval = pbt.interval or max(cfg.steps // 10, 1)
    check(0 < interval <= cfg.steps, f"--interval {interval} must be in 1..--steps ({cfg.steps})", "pass a smaller --interval")
    for name, values in init.items():
        check(all(math.isfinite(v) and v >= 0 for v in values), f"--init: values of {name} must be finite and >= 0, got {values}",
              f"write e.g. {name}=1e-7,1e-3")
    if pbt.ray_address:
        check_address(pbt.ray_address)
    return ranges, init, interval


# -- one member (runs in a Ray worker) ---------------------------------------------------------
def member_index() -> int:
    """This trial's index in the population (Tune's trial ids end in _<index>)."""
    from ray import tune

    return int(tune.get_context().get_trial_id().rsplit("_", 1)[-1])


def _member(config: dict) -> None:
    """Tune function trainable: train one member, report every `interval` env steps with a checkpoint."""
    from ray import tune
    from marl.trainer import Trainer

    setup = config["marl"]
    names = list(setup["hparams"])
    hp = {n: float(config[n]) for n in names}
    k = member_index()
    run_dir = Path(setup["population"]) / f"member_{k}"
    entry = ALGOS.get(setup["train"]["algo"])
    algo_cfg = entry.config(**{**setup["algo"], **hp})
    cfg = replace(from_dict(TrainConfig, setup["train"]), run_dir=str(run_dir), seed=setup["train"]["seed"] + k)
    start = tune.get_checkpoint()
    if start is not None:
        with start.as_directory() as folder:
            donor = json.loads((Path(folder) / "member.json").read_text())
            payload = load_checkpoint(Path(folder) / "latest.pt")
        if donor["member"] != k:  # an exploit: this run continues from the better member's weights
            metrics = run_dir / "metrics.jsonl"
            payload["metrics_bytes"] = metrics.stat().st_size if metrics.is_file() else 0  # this member's rows stay
        save_step_checkpoint(run_dir, payload["step"], payload)
        before = json.loads((run_dir / "hparams.json").read_text()) if (run_dir / "hparams.json").is_file() else None
        event = {"step": payload["step"], "member": k, "kind": "exploit" if donor["member"] != k else "restart",
                 "from": donor["member"], "hparams_before": before, "hparams_after": hp, "pid": os.getpid()}
        cfg = replace(cfg, resume=True, allow_config_change=True)
    elif run_dir.exists():  # a restart before the member's first checkpoint: start it afresh
        shutil.rmtree(run_dir)
    with Trainer(cfg, algo_cfg, set_fields={"allow_config_change"}) as t:
        slot = next(n for n in t.learners if t.slot_cfgs[n][0] == cfg.algo)  # the learner whose hyperparameters PBT explores
        learner, score = t.learners[slot], "eval/return_mean" if t.pmap is None else f"eval/{slot}/return_mean"
        lr_used = float(learner.opt.lr) if hasattr(learner, "opt") else float("nan")  # what the next update steps with
        (run_dir / "hparams.json").write_text(json.dumps(hp))
        (run_dir / "worker.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "step": t.step_count}))
        if start is not None:
            with open(run_dir / "events.jsonl", "a") as f:
                f.write(json.dumps({**event, "lr_used": lr_used}) + "\n")
        target = t.step_count
        while True:  # a member restarted at the end reports once more (its own result, not the donor's)
            target = min(target + setup["interval"], cfg.steps)
            if setup["league"] and not t.done:
                opponent = league_opponent(t, setup["league"], run_dir.parent, k)
                if opponent is not None:
                    with open(run_dir / "events.jsonl", "a") as f:
                        f.write(json.dumps({"step": t.step_count, "member": k, "kind": "opponent", "from": opponent}) + "\n")
            while t.step_count < target:
                t.step()
            if t.last["eval"] != t.step_count or not t.final:
                t.evaluate()
            t.log_evals()
            if t.last["ckpt"] != t.step_count:
                t.checkpoint()
            row = {"step": t.step_count, METRIC: float(t.final[score]), "member": k, **hp,
                   "lr_used": float(learner.opt.lr) if hasattr(learner, "opt") else float("nan")}
            with tempfile.TemporaryDirectory() as folder:
                shutil.copy(run_dir / "checkpoints" / "latest.pt", Path(folder) / "latest.pt")
                (Path(folder) / "member.json").write_text(json.dumps({"member": k, "step": t.step_count, "hparams": hp}))
                tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))
            if t.done:
                break


def league_opponent(t, slot: str, population: Path, k: int) -> int | None:
    """Let the frozen `slot` play a frozen copy of another member's learner (drawn uniformly from
    those with a checkpoint, by a generator of the member and step); its index, or None."""
    from marl.agentmap import checkpoint_policy

    others = [d for d in sorted(population.glob("member_*")) if d.name != f"member_{k}" and (d / "checkpoints" / "latest.pt").is_file()]
    if not others:
        return None
    pick = others[int(np.random.default_rng([t.cfg.seed, t.step_count]).integers(len(others)))]
    learner = next(n for n in t.slots if n in t.learners)
    spec = t.spec.subset(t.slot_agents[t.slots.index(slot)])
    t.set_policy(slot, checkpoint_policy(str(pick / "checkpoints" / "latest.pt"), learner, spec, exact=True).to(t.device))
    return int(pick.name.rsplit("_", 1)[1])


# -- the population ----------------------------------------------------------------------------
def run_pbt(cfg: TrainConfig, algo_cfg, pbt: PBTConfig) -> dict:
    """Train the population; returns {"members": [...], "events": [...], "best": {...}} (also
    written to `<population>/population.json`). Every input check runs before Ray starts."""
    from marl.train import build, run_dir_for

    ranges, init, interval = check_pbt(cfg, algo_cfg, pbt)
    population = run_dir_for(cfg).resolve()
    if population.exists():
        check(population.is_dir(), f"--run-dir {population} is a file, not a directory", "pass a directory path for --run-dir")
        mine = (population / MARKER).is_file()
        check(not any(population.iterdir()) or (mine and cfg.overwrite),
              f"--run-dir {population} already holds {'a population' if mine else 'files that are not a marl population'}",
              "pass another --run-dir" + (" or --overwrite to replace it" if mine else ""))
    if cfg.policies:  # the env name (the members build the slots)
        envs.make_factory(cfg.env, **cfg.env_kwargs)
    else:  # the env and the algorithm fit
        build(replace(cfg, workers=0, num_envs=1), algo_cfg, torch.device("cpu"))[1].close()
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    if cfg.overwrite and population.is_dir():
        shutil.rmtree(population)
    population.mkdir(parents=True, exist_ok=True)
    (population / MARKER).write_text("")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if pbt.ray_address:
        try:
            ray.init(address=pbt.ray_address, logging_level="ERROR", log_to_driver=False)
        except ConnectionError as err:
            raise MarlError(f"--ray-address {pbt.ray_address}: {str(err).splitlines()[0]}",
                            "pass the address `ray start --head` printed (the node's IP, not 127.0.0.1); for a cluster with token authentication "
                            "set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) in this environment") from None
    else:
        ray.init(address="local", num_cpus=pbt.num_cpus or min(pbt.members, os.cpu_count() or 1), include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False, configure_logging=True)
    try:
        space = {name: _space(low, high) for name, (low, high) in ranges.items()}
        param_space: dict[str, Any] = {"index": tune.grid_search(list(range(pbt.members)))}
        for name in ranges:  # an initial value given per member, else drawn from its range
            param_space[name] = tune.sample_from(_pick(init[name])) if name in init else space[name]
        member_train = {**to_dict(replace(cfg, run_dir="", overwrite=False, workers=0, progress=False, torch_threads=1,
                                           eval_interval=interval, checkpoint_interval=interval))}
        param_space["marl"] = {"train": member_train, "algo": to_dict(algo_cfg), "hparams": list(ranges),
                               "interval": interval, "population": str(population), "league": pbt.league}
        scheduler = PopulationBasedTraining(time_attr="step", perturbation_interval=interval, hyperparam_mutations=space,
                                            quantile_fraction=pbt.quantile, resample_probability=pbt.resample_probability,
                                            synch=True)
        tuner = tune.Tuner(tune.with_resources(_member, {"cpu": 1}), param_space=param_space,
                           tune_config=tune.TuneConfig(scheduler=scheduler, metric=METRIC, mode="max", num_samples=1),
                           run_config=tune.RunConfig(name="tune", storage_path=str(population), verbose=0,
                                                     failure_config=tune.FailureConfig(max_failures=pbt.max_failures),
                                                     checkpoint_config=tune.CheckpointConfig(num_to_keep=4)))
        with warnings.catch_warnings():  # Tune's hint about reuse_actors is for class trainables
            warnings.simplefilter("ignore", UserWarning)
            grid = tuner.fit()
    finally:
        ray.shutdown()
    errors = [r.error for r in grid if r.error is not None]
    check(not errors, f"a member failed more than --max-failures times: {str(errors[0]).strip().splitlines()[-1] if errors else ''}",
          "see the member's metrics.jsonl and Ray's log under the population directory; raise --max-failures")
    steps = sorted(int((r.metrics or {}).get("step", 0)) for r in grid)
    if steps[0] < cfg.steps:  # Tune ends members early without an error only when the experiment is stopped (Ctrl-C)
        raise KeyboardInterrupt(f"the population stopped before --steps {cfg.steps} (its members at steps {steps}), so no "
                                f"population.json was written; the members' metrics and checkpoints stay in {population}")
    return summarise(population, [r.metrics for r in grid], list(ranges))


def _space(low: float, high: float):
    from ray import tune

    return tune.loguniform(low, high) if low > 0 and high / low >= 20 else tune.uniform(low, high)


def _pick(values: list[float]):
    return lambda spec: values[spec.config["index"] % len(values)]


def summarise(population: Path, finals: list[dict], names: list[str]) -> dict:
    """The final table (members by return, their hyperparameters) and every exploit and restart event."""
    members = sorted(({"member": int(m["member"]), "step": int(m["step"]), METRIC: float(m[METRIC]), **{n: float(m[n]) for n in names}}
                      for m in finals), key=lambda m: m["member"])
    events = []
    for d in sorted(population.glob("member_*/events.jsonl")):
        events += [json.loads(line) for line in d.read_text().splitlines() if line.strip()]
    events.sort(key=lambda e: (e["step"], e["member"]))
    best = max(members, key=lambda m: m[METRIC])
    out = {"members": members, "events": events, "best": best}
    (population / "population.json").write_text(json.dumps(out, indent=1))
    return out


def format_table(result: dict, names: list[str]) -> str:
    """The population as text: one line per member, then the events."""
    head = ["member", "step", METRIC, *names]
    lines = ["  ".join(f"{h:>12}" for h in head)]
    for m in result["members"]:
        lines.append("  ".join(f"{m[h]:>12.6g}" if isinstance(m[h], float) else f"{m[h]:>12}" for h in head))
    for e in result["events"]:
        if e["kind"] == "exploit":
            hp = ", ".join(f"{n}={v:.3g}" for n, v in e["hparams_after"].items())
            lines.append(f"step {e['step']}: member_{e['member']} copied member_{e['from']} ({hp})")
    restarts = sum(e["kind"] == "restart" for e in result["events"])
    games = sum(e["kind"] == "opponent" for e in result["events"])
    if games:
        lines.append(f"league: {games} times a member took another member's learner as its opponent")
    lines.append(f"restarts from a member's own checkpoint (paused by the scheduler, or its worker died): {restarts}")
    return "\n".join(lines)
