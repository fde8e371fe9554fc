"""Issue 22: result.json says which CPU computed it (oneDNN and MKL choose kernels by instruction
set, so the Figure-3 twin's README numbers may differ by CPU)."""
from __future__ import annotations

import json
import platform


from sslprune.core import machine
from sslprune.core.stage import DONE, ImpLevel

from conftest import tiny_config


def test_the_cpu_model_is_the_first_model_name_of_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n"
                    "\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n")
    assert machine.cpu_model(info) == "AMD EPYC 7B13 64-Core Processor"


def test_without_cpuinfo_the_platform_answers(tmp_path, monkeypatch):
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")  # aarch64: no model name
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert machine.cpu_model(arm) == machine.cpu_model(tmp_path / "missing") == "arm"
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert machine.cpu_model(tmp_path / "missing") == "aarch64"
    monkeypatch.setattr(platform, "machine", lambda: "")
    assert machine.cpu_model(tmp_path / "missing") == "unknown"


def test_every_stage_records_its_cpu_model_in_result_json(tmp_path, monkeypatch):
    import torch
    from sslprune.compute import runner
    from sslprune.compute.runtime import Runtime

    monkeypatch.setattr(machine, "cpu_model", lambda cpuinfo=machine.CPUINFO: "Test CPU 9000")
    stage = ImpLevel(tiny_config(tmp_path), "labels", 0, 0)
    r = runner.run(stage, Runtime(torch.device("cpu")))
    assert r["cpu_model"] == "Test CPU 9000"
    assert json.loads((stage.dir / DONE).read_text())["cpu_model"] == "Test CPU 9000"
