"""The GPU check: everything the CPU tests cannot see, in one run of at most 8 minutes on one H100/H200.

One line per check, then the two train-step ratios last:
  device            what runs it (GPU name, torch, CUDA)
  memory format     RotNet's and S4L's 4x pretext batches reach the model channels_last on CUDA
  loss dtype        NPID's (and every task's) loss is computed in fp32 outside bf16 autocast
  resume            a tiny IMP stage on CUDA, killed with SIGKILL mid-stage and resumed from its
                    checkpoint (the old crash: RNG states moved to the GPU), against an uninterrupted run
  input pipeline    real/synthetic: ResNet-50 at batch 256 on JPEGs decoded and augmented on the GPU
                    against the same model on one synthetic batch (benchmarks/input_pipeline.py)
  train step        project/reference for CIFAR ResNet-18 at batch 512 and ResNet-50 at batch 256,
                    bf16 + channels_last (benchmarks/train_step.py), the last two lines

    python benchmarks/gpu_check.py                      # on the GPU machine (see gpu_check.sh for set-up)
    python benchmarks/gpu_check.py --device cpu --quick # a dry run of every check at toy sizes, here
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def say(name: str, text: str) -> None:
    print(f"[gpu-check] {name:16s} {text}", flush=True)


def check_device(device: torch.device) -> None:
    if device.type == "cuda":
        say("device", f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        say("device", f"cpu (dry run), torch {torch.__version__}")


def colour_data(n: int, size: int = 16):
    """Random 3-channel images: a 1-channel batch is trivially contiguous in both memory formats."""
    from sslprune.compute.dataset import MemoryData, Split

    g = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g))
    return MemoryData("colour", train, Split(train.images[:64], train.labels[:64]), 10, (0.5,) * 3, (0.25,) * 3,
                      pad=2, flip=True)


def _fit_once(name: str, device: torch.device, steps: int, record) -> None:
    """A few training steps of task `name` on 3-channel images, channels_last as on CUDA."""
    from sslprune.compute import loader as loaders, mask as masks, model as models, task as tasks, trainer
    from sslprune.control.config import ModelConfig, OptimConfig, RunConfig, TaskConfig
    from sslprune.control.progress import Progress

    data = colour_data(64 * steps)
    task = tasks.make(TaskConfig(name, embedding=16, negatives=64), data)
    ld = loaders.make(data, 64, 0, device, channels_last=True, index_targets=task.index_targets)
    task.bind(ld)
    net = models.build(ModelConfig("resnet_small", 8), 3, task.num_outputs, 0).to(device)
    net = net.to(memory_format=torch.channels_last)
    record(net, task)
    with tempfile.TemporaryDirectory() as tmp:
        job = trainer.Fit(model=net, task=task, loader=ld, optim=OptimConfig(batch_size=64, epochs=1, lr=0.05),
                          mask=masks.ones(net), checkpoint=Path(tmp) / "c.pt",
                          autocast=torch.bfloat16 if device.type == "cuda" else None)
        trainer.fit(job, RunConfig(quiet=True, log_every=10 ** 6), Progress("check", quiet=True))


def check_memory_format(device: torch.device, steps: int) -> bool:
    ok = True
    for name in ("rotnet", "s4l"):
        seen = []

        def record(net, task):
            net.register_forward_pre_hook(
                lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))

        _fit_once(name, device, steps, record)
        good = bool(seen) and all(seen)
        ok &= good
        say("memory format", f"{name}: {sum(seen)}/{len(seen)} forward passes channels_last: {'ok' if good else 'FAIL'}")
    return ok


def check_loss_dtype(device: torch.device, steps: int) -> bool:
    seen = []

    def record(net, task):
        loss = task.loss

        def recorded(outputs, target):
            out = loss(outputs, target)
            seen.append((torch.is_autocast_enabled(device.type), outputs.dtype, out.dtype, task.bank.dtype))
            return out
        task.loss = recorded

    _fit_once("npid", device, steps, record)
    good = bool(seen) and all(not on and a == b == c == torch.float32 for on, a, b, c in seen)
    say("loss dtype", f"npid: {len(seen)} losses, autocast off and fp32 in each "
                      f"(outputs, loss, bank: {seen[0][1:] if seen else '-'}): {'ok' if good else 'FAIL'}")
    return good


def _imp(store: Path, device: str, epochs: int) -> list[str]:
    return ["sslprune-imp", f"store={store}", "signal=labels", "model.width=8", "prune.levels=0", "prune.rewind=5it",
            f"run.device={device}", "run.checkpoint_steps=1", "run.log_every=10", "run.quiet=false", "run.threads=1",
            f"signals.labels.optim.epochs={epochs}", "signals.labels.optim.milestones=[]", "wandb=disabled"]


def check_resume(device: torch.device, epochs: int) -> bool:
    """SIGKILL a stage mid-way on the device, resume it, compare with an uninterrupted run."""
    with tempfile.TemporaryDirectory() as tmp:
        ref, killed = Path(tmp) / "ref", Path(tmp) / "killed"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(_imp(ref, device.type, epochs), check=True, capture_output=True, env=env)
        p = subprocess.Popen(_imp(killed, device.type, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env)
        deadline = time.monotonic() + 300
        while not list(killed.glob("imp/*/seed_0/level_0/checkpoint.pt")) and time.monotonic() < deadline:
            if p.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        p.send_signal(signal.SIGKILL)
        p.wait()
        level = next(killed.glob("imp/*/seed_0/level_0"), None)
        if level is None or (level / "result.json").exists():
            say("resume", "FAIL: the stage finished (or never started) before it could be killed")
            return False
        out = subprocess.run(_imp(killed, device.type, epochs), capture_output=True, text=True, env=env)
        resumed = [line for line in out.stdout.splitlines() if "resumed from" in line]
        if out.returncode != 0 or not resumed:
            say("resume", f"FAIL: exit {out.returncode}, {'resumed' if resumed else 'did not resume'}: "
                          f"{out.stderr.strip().splitlines()[-1:] }")
            return False
        a = json.loads(next(ref.glob("imp/*/seed_0/level_0/result.json")).read_text())
        b = json.loads((level / "result.json").read_text())
        from sslprune.compute import checkpoint

        wa, wb = checkpoint.load(next(ref.glob("imp/*/seed_0/level_0/model.pt"))), checkpoint.load(level / "model.pt")
        diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].is_floating_point())
        step = resumed[0].split(" at step ")[-1]
        say("resume", f"killed with SIGKILL, {resumed[0].split(']')[0][1:]} resumed at step {step}; accuracy "
                      f"{b['accuracy']:.4f} vs uninterrupted {a['accuracy']:.4f}, max |dw| {diff:.2e} "
                      f"({'bit-identical' if diff == 0 else 'cudnn autotuning makes CUDA runs differ by rounding'}): ok")
        return True


def check_input_pipeline(device: torch.device, quick: bool) -> None:
    import input_pipeline

    if device.type != "cuda":
        say("input pipeline", "skipped on CPU (the CPU ratio is benchmarks/input_pipeline.py's pipeline/reference)")
        return
    input_pipeline.main(["--device", "cuda", "--model", "resnet50", "--workers", str(min(10, os.cpu_count() or 1)),
                         "--batch", "256", "--reps", "1" if quick else "2"])


def train_step_ratio(device: torch.device, model: str, batch: int, quick: bool) -> float:
    import contextlib
    import io

    import train_step

    if device.type == "cuda":
        args = ["--device", "cuda", "--model", model, "--batch", str(batch), "--steps", "30", "--warmup", "10",
                "--reps", "3"]
        args += ["--image-size", "224", "--pad", "16", "--width", "64"] if model == "resnet50" else ["--width", "64"]
    else:
        args = ["--device", "cpu", "--model", model, "--batch", "8", "--steps", "2", "--warmup", "1", "--reps", "1",
                "--width", "4", "--threads", "1"] + (["--image-size", "32"] if model == "resnet50" else [])
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        train_step.main(args)
    line = next(x for x in text.getvalue().splitlines() if x.startswith("project/reference:"))
    return float(line.split(":")[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="toy sizes (a dry run of every check)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but no CUDA device is visible; use --device cpu --quick for a dry run",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    t0 = time.monotonic()
    check_device(device)
    steps = 2 if args.quick else 4
    ok = check_memory_format(device, steps)
    ok &= check_loss_dtype(device, steps)
    ok &= check_resume(device, 2 if args.quick else 3)
    check_input_pipeline(device, args.quick)
    r18 = train_step_ratio(device, "resnet18_cifar", 512, args.quick)
    r50 = train_step_ratio(device, "resnet50", 256, args.quick)
    say("time", f"{time.monotonic() - t0:.0f} s")
    print(f"resnet18_cifar batch 512 project/reference: {r18:.3f}")
    print(f"resnet50 batch 256 project/reference: {r50:.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
