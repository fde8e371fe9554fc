"""sslprune.api: compose, run, find and read an experiment from Python; the README's example as written."""
from __future__ import annotations

import csv
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sslprune import api
from sslprune.core.errors import ConfigError

from conftest import ROOT, cli


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_config_composes_a_preset_with_overrides_like_the_command_line(tmp_path):
    cfg = api.config("fig3_imagenet_resnet50_small", "seeds=[0]", "model.width=4", store=tmp_path / "runs")
    assert cfg.experiment == "fig3_imagenet_resnet50_small" and cfg.seeds == [0] and cfg.model.width == 4
    assert cfg.store == str(tmp_path / "runs")
    assert set(cfg.signals) == {"labels", "rotnet", "exemplar"}
    # the same config the command line composes (--cfg job prints it)
    from omegaconf import OmegaConf

    shown = cli("sslprune-run", "experiment=fig3_imagenet_resnet50_small", "seeds=[0]", "model.width=4",
                f"store={tmp_path / 'runs'}", "--cfg", "job").stdout
    printed = OmegaConf.to_container(OmegaConf.create(shown))
    mine = dataclasses.asdict(cfg)
    assert {k: mine[k] for k in ("signals", "retrain", "prune", "model", "data", "seeds")} == \
        {k: printed[k] for k in ("signals", "retrain", "prune", "model", "data", "seeds")}


def test_bad_preset_or_override_is_one_clear_config_error():
    with pytest.raises(ConfigError, match=r"experiment='fig3' is not a preset: one of .*fig3_imagenet_resnet50_small"):
        api.config("fig3")
    with pytest.raises(ConfigError, match="model.width=0 must be > 0"):
        api.config("demo", "model.width=0")
    with pytest.raises(ConfigError, match="nosuchkey") as e:
        api.config("demo", "nosuchkey=1")
    assert "\n" not in str(e.value)
    assert "demo" in api.presets() and "fig8_semisupervised_resnet50_small" in api.presets()


def test_config_leaves_an_initialised_hydra_as_it_was(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    other = tmp_path / "conf"
    other.mkdir()
    (other / "mine.yaml").write_text("answer: 42\n")
    with initialize_config_dir(config_dir=str(other), version_base=None):
        assert api.config("demo").experiment == "demo"
        assert GlobalHydra.instance().is_initialized()
        assert compose("mine").answer == 42  # the caller's search path is back
    assert not GlobalHydra.instance().is_initialized()


def test_where_and_stage_find_stages_by_label_and_name_the_closest_on_a_typo(tmp_path):
    cfg = api.config("demo", "prune.levels=2", store=tmp_path)
    d = api.where(cfg, "retrain rotnet random_reinit seed=1 level=2")
    assert d.parent.parent == api.where(cfg, "imp rotnet seed=1 level=2") and d.name == "random_reinit"
    assert str(d).startswith(str(tmp_path / "imp"))
    # The random start at a pruned level is one stage for every signal (issue 22), under random/.
    shared = api.where(cfg, "retrain random mask seed=1 level=2")
    assert shared.relative_to(tmp_path).parts[0] == "random" and shared.parent.name == "level_2"
    assert api.stage(cfg, "probe:digits rotnet seed=0 level=1").kind == "probe"
    with pytest.raises(ConfigError, match=r"no stage labelled 'imp rotnet seed=0 level=7'.*closest: imp rotnet seed=0 "
                                          r"level=\d"):
        api.where(cfg, "imp rotnet seed=0 level=7")


def test_tables_are_lists_of_dicts_without_pandas(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    cfg = api.config("demo", "prune.levels=1", store=tmp_path)
    rows = api.stages(cfg)
    # seeds x signals x levels x (IMP + 3 starts) + probes, level 0's random starts one stage per seed,
    # + the probe of RotNet's initial weights per seed, and level 1's random start one stage per seed
    # for both signals (issue 22)
    assert isinstance(rows, list) and len(rows) == 2 * 2 * 2 * 4 + 2 * 2 - 2 * 3 + 2 - 2
    assert {r["state"] for r in rows} == {"todo"}
    assert api.results(cfg) == [] and api.summary(cfg) == []


def test_tables_are_dataframes_with_pandas(tmp_path):
    pandas = pytest.importorskip("pandas")
    cfg = api.config("demo", "prune.levels=1", store=tmp_path)
    assert isinstance(api.stages(cfg), pandas.DataFrame)


def test_importing_the_api_imports_neither_torch_nor_hydra():
    code = "import sys, sslprune.api; print(sorted(m for m in ('torch', 'hydra', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path):
    code = readme_example()
    assert "api.run(cfg)" in code and "api.where(" in code
    # As a user runs it: a file (local runs spawn workers, which import the main file again)
    (tmp_path / "example.py").write_text(code)
    p = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert out.count("dense labels network:") == 1 and "Traceback" not in p.stderr
    store = tmp_path / "runs-api"
    with open(store / "reports" / "demo" / "results.csv") as f:
        results = list(csv.DictReader(f))
    # 2 signals x 2 levels x (IMP + 3 starts) + 2 probes + the probe of the initial weights, one seed
    assert len(results) == 19
    # 15 stages (the random start of each level is one stage for both signals, issue 22), the one
    # stage run first is not run again.
    assert "14 stages ran" in out
    level1 = store / "imp"
    where = [ln for ln in out.splitlines() if ln.startswith(str(level1))]
    assert where and Path(where[0]).is_dir() and (Path(where[0]) / "result.json").exists()
    assert "| level | remaining | labels: winning ticket |" in out  # the pivot
