"""Infrastructure around training: config I/O, checkpoints, run logging (the CLI: tests/test_cli.py)."""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from marl import checkpoint as ckpt
from marl.cli import load_run_config
from marl.config import TrainConfig
from marl.configio import coerce, field_docs, from_dict, in_range, load_yaml, parse_value, positive, save_yaml, to_dict
from marl.core.errors import MarlError
from marl.logging import RunLogger, config_group, read_metrics, resolve_wandb_mode


@dataclass(frozen=True)
class DummyConfig:  # a config dataclass with the field kinds algorithm configs use
    lr: float = 1e-3
    """Learning rate of the dummy."""
    sharing: str | list = "all"
    """Parameter sharing: all, none or a group id per agent."""
    hidden: tuple = (64, 64)
    """Hidden layer sizes."""
    critic: str = "local"
    """Critic input: local or central."""
    normalise: bool = True
    """Normalise advantages."""
    extra: dict = field(default_factory=dict)
    """Anything else."""


# ----------------------------------------------------------------------------- configio
def test_field_docs_and_round_trip(tmp_path):
    docs = field_docs(TrainConfig)
    assert set(docs) == set(to_dict(TrainConfig()))
    assert docs["steps"].startswith("Training budget")
    assert field_docs(DummyConfig)["sharing"].startswith("Parameter sharing")
    cfg = TrainConfig(steps=123, env_kwargs={"N": 2}, run_dir="runs/x")
    save_yaml(tmp_path / "c.yaml", to_dict(cfg))
    assert from_dict(TrainConfig, load_yaml(tmp_path / "c.yaml")) == cfg
    algo = DummyConfig(sharing=[0, 0, 1], hidden=(32, 16))
    save_yaml(tmp_path / "config.yaml", {"train": to_dict(cfg), "algo": to_dict(algo)})  # as marl.train writes it
    run, algo_d = load_run_config(tmp_path / "config.yaml")
    assert from_dict(TrainConfig, run) == cfg and from_dict(DummyConfig, algo_d) == algo  # list -> tuple again
    assert not list(tmp_path.glob(".*.tmp"))


def test_from_dict_names_bad_key_and_type():
    with pytest.raises(MarlError, match="unknown key 'stesp'.*did you mean 'steps'"):
        from_dict(TrainConfig, {"stesp": 10})
    with pytest.raises(MarlError, match="'steps' expects int"):
        from_dict(TrainConfig, {"steps": [1]})
    with pytest.raises(MarlError, match="missing"):
        load_yaml("/nonexistent/config.yaml")


@pytest.mark.parametrize("tp, text, expected", [
    (bool, "true", True), (bool, "0", False), (bool, "No", False),
    (int, "200_000", 200_000), (int, "1e5", 100_000), (float, "3e-4", 3e-4),
    (dict, "N=3,max_cycles=25,continuous_actions=false", {"N": 3, "max_cycles": 25, "continuous_actions": False}),
    (dict, '{"N": 3}', {"N": 3}), (dict, "{'N': 3}", {"N": 3}), (dict, "", {}),
    (str | list, "all", "all"), (str | list, "none", "none"), (str | list, "0,0,1", [0, 0, 1]),
    (str | list, "[1, 0]", [1, 0]), (str | list, "0", [0]),
    (tuple, "64,64", (64, 64)), (tuple[int, ...], "[32, 32]", (32, 32)), (list[str], "a,1", ["a", "1"]),
    (float | None, "none", None), (float | None, "0.5", 0.5),
])
def test_parse_value(tp, text, expected):
    value = parse_value(tp, text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("tp, text", [(bool, "maybe"), (int, "2.5"), (int, "ten"), (dict, "N"), (dict, "{bad")])
def test_parse_value_errors_name_the_flag(tp, text):
    with pytest.raises(MarlError, match="--num-envs expects"):
        parse_value(tp, text, "num_envs")


def test_coerce_and_validators():
    assert coerce(tuple, [1, 2]) == (1, 2) and coerce(float, 1) == 1.0 and coerce(str | list, [0, 1]) == [0, 1]
    with pytest.raises(MarlError):
        coerce(int, True)
    positive("lr", 1e-3)
    with pytest.raises(MarlError, match="--lr must be > 0"):
        positive("lr", 0)
    with pytest.raises(MarlError, match=r"--gamma must be in \[0, 1\]"):
        in_range("gamma", 1.5, 0, 1)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_latest_and_keep(tmp_path):
    for step in (10, 20, 30, 40):
        ckpt.save_step_checkpoint(tmp_path, step, {"step": step, "w": torch.full((2,), float(step))}, keep=3)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest.pt", "step_20.pt", "step_30.pt", "step_40.pt"]
    assert ckpt.latest_checkpoint(tmp_path).name == "latest.pt"
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 40
    assert ckpt.load_checkpoint(tmp_path)["w"].tolist() == [40.0, 40.0]  # a run dir means its latest
    (tmp_path / "checkpoints" / "latest.pt").unlink()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_40.pt"
    assert ckpt.latest_checkpoint(tmp_path / "empty") is None


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "latest.pt"
    ckpt.save_checkpoint(path, {"step": 1})

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]  # no temp file left behind


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(MarlError, match="is missing"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    good = ckpt.save_checkpoint(tmp_path / "good.pt", {"step": 5, "w": torch.zeros(1000)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)  # a plain state dict
    for bad in (truncated, garbage, foreign):
        with pytest.raises(MarlError, match="is corrupt or not a marl checkpoint") as info:
            ckpt.load_checkpoint(bad)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- logging
def test_run_logger_writes_jsonl(tmp_path, capsys):
    logger = RunLogger(tmp_path / "run", {"train": {"seed": 1}}, wandb_mode="disabled", total_steps=100,
                       progress=False)
    logger.log(50, {"train/return_mean": -3.5, "loss/policy": torch.tensor(0.25)})
    logger.log(100, {"eval/return_mean": 1.0, "perf/steps_per_s": 1234.0})
    logger.close()
    logger.close()  # idempotent
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [50, 100]
    assert all(isinstance(r["time_s"], float) and r["time_s"] >= 0 for r in records)
    assert records[0]["train/return_mean"] == -3.5 and records[0]["loss/policy"] == 0.25
    assert records[1]["eval/return_mean"] == 1.0
    assert "eval/return_mean 1" in capsys.readouterr().out
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 150, "ti')  # a write cut short by a crash
    assert len(read_metrics(tmp_path / "run")) == 2


def test_wandb_group_and_online_fallback(tmp_path, monkeypatch):
    one = {"train": {"algo": "mappo", "env": "mpe2/x", "seed": 1, "run_dir": "runs/a"}, "algo": {"lr": 1e-3}}
    two = {"train": {"algo": "mappo", "env": "mpe2/x", "seed": 2, "run_dir": "runs/b"}, "algo": {"lr": 1e-3}}
    other = {"train": {"algo": "mappo", "env": "mpe2/x", "seed": 1, "run_dir": "runs/a"}, "algo": {"lr": 1e-4}}
    assert config_group(one) == config_group(two) != config_group(other)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    mode, note = resolve_wandb_mode("online")
    assert mode == "offline" and "offline" in note
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password abc123\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setattr("marl.logging._unreachable", lambda url, timeout: None)  # as if the server answered
    assert resolve_wandb_mode("online") == ("online", None)
    with pytest.raises(MarlError):
        resolve_wandb_mode("sometimes")


def test_wandb_init_failure_keeps_jsonl(tmp_path, monkeypatch, capsys):
    fake = types.SimpleNamespace(Settings=lambda **kw: kw, init=lambda **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = RunLogger(tmp_path, {}, wandb_mode="offline", progress=False)
    logger.log(1, {"train/return_mean": 0.0})
    logger.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "W&B init failed" in err[0] and "boom" in err[0]
    assert read_metrics(tmp_path)[0]["step"] == 1


def test_wandb_offline_run_lands_in_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # RunLogger sets it; restore it afterwards
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = RunLogger(tmp_path / "run", {"train": {"seed": 1}}, wandb_mode="offline", progress=False)
    assert logger.wandb_run is not None
    logger.log(10, {"train/return_mean": 1.5})
    logger.close()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert read_metrics(tmp_path / "run")[0]["train/return_mean"] == 1.5
