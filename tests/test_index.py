"""A readable store: chain.json in every chain folder, stages.csv in the report, --where."""
from __future__ import annotations

import csv
import dataclasses

from sslprune import api
from sslprune.core import store as files
from sslprune.core.schema import RetrainConfig, TaskConfig
from sslprune.core.stage import ImpLevel
from sslprune.control import index, report
from sslprune.api import compute, uses_cuda
from sslprune.control.local import run_local

from conftest import cli, tiny_config


def test_chain_json_spells_out_every_value_and_who_used_it(store):
    cfg = tiny_config(store)
    written = index.write_chains(cfg)
    assert len(written) == 2
    rot = ImpLevel(cfg, "rotnet", 0, 0).chain_dir / index.CHAIN
    assert rot in written
    doc = files.read_json(rot)
    # defaults included: config.json / the hash leave them out, so a RotNet chain would read "task": {}
    assert doc["task"] == dataclasses.asdict(TaskConfig("rotnet")) and doc["task"]["negatives"] == 16384
    assert doc["identity"]["task"] == {}
    assert doc["signal"] == "rotnet" and doc["chain"] == rot.parent.name
    assert doc["model"] == {"name": "resnet_small", "width": 4, "init": "per_signal", "_target_": None, "kwargs": {},
                            "weights": None, "weights_key": None}
    assert doc["data"]["name"] == "digits" and doc["optim"]["epochs"] == 2 and doc["prune"]["rewind"] == "3it"
    assert doc["init_from"] is None and doc["used_by"] == [{"experiment": "tiny", "signal": "rotnet"}]
    # unchanged: not rewritten; another experiment using the same chain is added to used_by
    mtime = rot.stat().st_mtime_ns
    assert index.write_chains(cfg) == [] and rot.stat().st_mtime_ns == mtime
    other = dataclasses.replace(tiny_config(store), experiment="other")
    index.write_chains(other)
    assert files.read_json(rot)["used_by"] == [{"experiment": "tiny", "signal": "rotnet"},
                                               {"experiment": "other", "signal": "rotnet"}]


def test_a_local_run_writes_chain_json_before_its_stages_and_the_report_indexes_them(store):
    cfg = tiny_config(store, retrain=RetrainConfig(schemes=[]), probe=dataclasses.replace(tiny_config(store).probe,
                                                                                          signals=[], datasets=[]))
    cfg.prune.levels = 0
    cfg.signals = {"labels": cfg.signals["labels"]}
    run_local(cfg, compute, uses_cuda)
    chain = ImpLevel(cfg, "labels", 0, 0).chain_dir
    assert files.read_json(chain / index.CHAIN)["task"]["name"] == "labels"
    out, _ = report.write(cfg)
    with open(out / index.STAGES) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == index.COLUMNS
    assert rows == [{"label": "imp labels seed=0 level=0", "kind": "imp", "signal": "labels", "seed": "0",
                     "level": "0", "scheme": "", "evaluation": "pretext",
                     "directory": f"imp/{chain.name}/seed_0/level_0", "state": "done"}]


def test_status_where_prints_a_stage_directory_and_names_the_closest_label_on_a_typo(tmp_path):
    args = [f"store={tmp_path}", "prune.levels=2"]
    # The random mask of a pruned level is one stage for every signal (issue 22): it has its own label.
    p = cli("sslprune-status", *args, "--where", "retrain random mask seed=1 level=2")
    cfg = api.config("demo", *args)
    assert p.stdout == f"{api.where(cfg, 'retrain random mask seed=1 level=2')}\n"
    assert "/random/" in p.stdout and p.stdout.strip().endswith("/seed_1/level_2/" + p.stdout.strip().split("/")[-1])
    p = cli("sslprune-status", *args, "--where=imp labels seed=0 level=0")
    assert p.stdout == f"{api.where(cfg, 'imp labels seed=0 level=0')}\n"
    p = cli("sslprune-status", *args, "--where", "imp rotnet seed=1 level=9", check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "sslprune: error: no stage labelled 'imp rotnet seed=1 level=9' in experiment demo (46 stages); "
        "closest: imp rotnet seed=1 level=2; imp rotnet seed=1 level=1; imp rotnet seed=1 level=0"]
    assert not (tmp_path / "imp").exists()  # --where reads, never writes


def test_a_stage_app_writes_only_its_own_chain_and_nothing_before_its_inputs_are_there(tmp_path):
    p = cli("sslprune-imp", f"store={tmp_path}", "signal=rotnet", "level=1", check=False)
    assert p.returncode == 2 and "not done" in p.stderr
    assert not (tmp_path / "imp").exists()  # a missing parent is reported before anything is written
    cli("sslprune-train", f"store={tmp_path}", "signal=rotnet", "model.width=4", "run.quiet=true",
        "signals.rotnet.optim.epochs=1", "signals.rotnet.optim.milestones=[]")
    (chain,) = (tmp_path / "imp").iterdir()  # not the labels chain, which this app does not run
    assert files.read_json(chain / index.CHAIN)["signal"] == "rotnet"
