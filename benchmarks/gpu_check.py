"""The GPU check: everything the CPU tests cannot see, in one run of at most 8 minutes on one H100/H200.

One line per check, then the train-step ratios, the two project/reference ratios last:
  device            what runs it (GPU name, torch, CUDA)
  memory format     RotNet's and S4L's 4x pretext batches reach the model channels_last on CUDA
  mask format       each mask has its channels_last weight's strides (the fused _foreach_mul_)
  loss dtype        NPID's (and every task's) loss is computed in fp32 outside bf16 autocast
  resume            a tiny IMP stage on CUDA, killed with SIGKILL mid-stage, its checkpoint given the
                    8 CUDA RNG states an 8-GPU job used to save, and resumed under
                    CUDA_VISIBLE_DEVICES=<one GPU> (first showing that torch's set_rng_state_all,
                    what resuming used to call, raises there), against an uninterrupted run
  decode            the project's batch JPEG decoder on the GPU against the same decoder on the CPU,
                    for real JPEGs (scikit-learn's two photographs and crops of them), two rounds of
                    batches decoded one after the other (the pattern of pytorch/vision PR 9606)
  exemplar/labels   img/s of an Exemplar training step (two augmented views per image, drawn from
                    seed.Draws) against a labels step, same model and batch
  input pipeline    real/synthetic: ResNet-50 at batch 256 on JPEGs decoded and augmented on the GPU
                    against the same model on one synthetic batch (benchmarks/input_pipeline.py)
  train step        masked/dense, then project/reference for CIFAR ResNet-18 at batch 512 and
                    ResNet-50 at batch 256, bf16 + channels_last (benchmarks/train_step.py)

The DDP decisions (items 7-8 of issue 20: finite checks, the checkpoint clock, `done`, a pack's
rendezvous) are the same code on NCCL and gloo and are tested on CPU ranks (tests/test_ranks.py);
one GPU cannot hold two NCCL ranks.

    python benchmarks/gpu_check.py                      # on the GPU machine (see gpu_check.sh for set-up)
    python benchmarks/gpu_check.py --dry-run            # every check at toy sizes on the CPU (--device cpu --quick)
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
    from sslprune.core.progress import Progress
    from sslprune.core.schema import ModelConfig, OptimConfig, RunConfig, TaskConfig
    from sslprune.compute import loader as loaders, mask as masks, model as models, task as tasks, trainer

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


def check_mask_format(device: torch.device) -> bool:
    from sslprune.core.schema import ModelConfig
    from sslprune.compute import mask as masks, model as models

    net = models.build(ModelConfig("resnet18_cifar", 16), 3, 10, 0).to(device).to(memory_format=torch.channels_last)
    applier = masks.Applier(net, masks.magnitude(dict(net.named_parameters()), masks.ones(net), 0.8))
    same = sum(m.stride() == p.stride() for m, p in zip(applier.masks, applier.params))
    good = same == len(applier.masks) > 0
    say("mask format", f"{same}/{len(applier.masks)} masks with their weight's strides: {'ok' if good else 'FAIL'}")
    return good


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


SAVED_GPUS = 8  # the CUDA RNG states an 8-GPU job's checkpoint held before issue 20


def _old_setter_fails(env: dict) -> str:
    """What resuming used to call, torch.cuda.set_rng_state_all with 8 states, where one GPU is
    visible: the error it raises ('' if none)."""
    code = ("import torch; torch.cuda.init(); s = torch.cuda.get_rng_state()\n"
            f"try:\n    torch.cuda.set_rng_state_all([s] * {SAVED_GPUS})\n"
            "except Exception as e:\n    print(type(e).__name__ + ': ' + str(e))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip()


def _as_an_8_gpu_job_saved_it(level: Path) -> None:
    """Give the killed stage's checkpoint the "cuda" RNG entry of the checkpoints of old versions."""
    from sslprune.compute import checkpoint

    path = level / checkpoint.LATEST
    state = checkpoint.load(path, verify=False)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8) for _ in range(SAVED_GPUS)]
    checkpoint.save_training(state, path)


def check_resume(device: torch.device, epochs: int) -> bool:
    """SIGKILL a stage mid-way on the device, give its checkpoint 8 GPUs' RNG states, resume it where
    one GPU is visible, compare with an uninterrupted run."""
    with tempfile.TemporaryDirectory() as tmp:
        ref, killed = Path(tmp) / "ref", Path(tmp) / "killed"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        one = {**env, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
        if device.type == "cuda":
            old = _old_setter_fails(one)
            say("resume", f"{SAVED_GPUS} saved CUDA RNG states, 1 GPU visible: set_rng_state_all raises "
                          f"{old or 'nothing (torch no longer fails there)'}")
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
        _as_an_8_gpu_job_saved_it(level)
        out = subprocess.run(_imp(killed, device.type, epochs), capture_output=True, text=True, env=one)
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
        say("resume", f"killed with SIGKILL, {SAVED_GPUS} CUDA RNG states in its checkpoint, resumed with "
                      f"CUDA_VISIBLE_DEVICES={one['CUDA_VISIBLE_DEVICES']}: "
                      f"{resumed[0].split(']')[0][1:]} resumed at step {step}; accuracy "
                      f"{b['accuracy']:.4f} vs uninterrupted {a['accuracy']:.4f}, max |dw| {diff:.2e} "
                      f"({'bit-identical' if diff == 0 else 'cudnn autotuning makes CUDA runs differ by rounding'}): ok")
        return True


def project_decode(blobs: list, device: torch.device) -> list:
    """The project's batch JPEG decoder (bytes as 1-D uint8 CPU tensors -> 3 x H x W uint8 images),
    looked up by name: the one place to change if sslprune.compute.image renames it."""
    from sslprune.compute import image

    for name in ("decode", "decode_jpegs", "decode_batch"):
        if callable(getattr(image, name, None)):
            return list(getattr(image, name)(blobs, device))
    raise SystemExit("gpu_check: sslprune.compute.image has no batch decoder (decode, decode_jpegs, decode_batch)")


def real_jpegs(n: int) -> list:
    """scikit-learn's two photographs as shipped, then n JPEG crops of them as input_pipeline builds."""
    import sklearn.datasets
    import input_pipeline

    folder = Path(sklearn.datasets.__file__).parent / "images"
    raw = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    raw += [input_pipeline.make_jpeg(i) for i in range(n)]
    return [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in raw]


def check_decode(device: torch.device, quick: bool) -> bool:
    """Decoded pixels on the device against the CPU decode of the same bytes. On a dry run the
    'device' side is PIL (another decoder than torchvision's libjpeg-turbo) to exercise the comparison."""
    import io

    import numpy as np
    from PIL import Image

    blobs = real_jpegs(14 if quick else 62)
    want = project_decode(blobs, torch.device("cpu"))
    batch, worst, mean, bad = 8, 0, [], 0
    for _ in range(2):  # a second round decodes into memory the first round's batches released
        for i in range(0, len(blobs), batch):
            if device.type == "cuda":
                got = [x.cpu() for x in project_decode(blobs[i:i + batch], device)]
            else:
                got = [torch.from_numpy(np.array(Image.open(io.BytesIO(b.numpy().tobytes())).convert("RGB")))
                       .permute(2, 0, 1) for b in blobs[i:i + batch]]
            for a, b in zip(got, want[i:i + batch]):
                if a.shape != b.shape:
                    bad += 1
                    continue
                d = (a.int() - b.int()).abs()
                worst, mean = max(worst, int(d.max())), mean + [float(d.float().mean())]
                bad += float(d.float().mean()) > 2  # a wrong block, not rounding, lifts an image's mean
    good = bad == 0 and max(mean) < 2
    say("decode", f"{len(blobs)} real JPEGs x 2 rounds in batches of {batch}, "
                  f"{'GPU' if device.type == 'cuda' else 'PIL (dry run)'} against the CPU decode: max |d| {worst}, "
                  f"mean |d| per image at most {max(mean):.3f}, {bad} images off: {'ok' if good else 'FAIL'}")
    return good


def exemplar_over_labels(device: torch.device, quick: bool) -> float:
    """img/s of an Exemplar step over a labels step (train_step.Bench: the real fit, same model)."""
    import argparse as ap
    import statistics

    import train_step

    cuda = device.type == "cuda"
    common = dict(model="resnet18_cifar", width=64 if cuda else 4, batch=512 if cuda else 8, image_size=32,
                  channels=3, pad=2, steps=30 if cuda else 2, warmup=10 if cuda else 1, reps=3 if cuda else 1,
                  device=device.type, threads=0 if cuda else 1)
    benches = {t: train_step.Bench(ap.Namespace(task=t, **common)) for t in ("labels", "exemplar")}
    ips = {t: [] for t in benches}
    for r in range(common["reps"]):
        for t in (("labels", "exemplar") if r % 2 == 0 else ("exemplar", "labels")):
            ips[t].append(benches[t].project(False)[0])
    med = {t: statistics.median(v) for t, v in ips.items()}
    ratio = med["exemplar"] / med["labels"]
    say("exemplar/labels", f"img/s {med['exemplar']:.0f} against {med['labels']:.0f}: {ratio:.3f} (its two views "
                           f"make about twice the forward work: 0.5 is what the model alone allows)")
    return ratio


def check_input_pipeline(device: torch.device, quick: bool) -> None:
    import input_pipeline

    if device.type != "cuda":
        say("input pipeline", "skipped on CPU (the CPU ratio is benchmarks/input_pipeline.py's pipeline/reference)")
        return
    input_pipeline.main(["--device", "cuda", "--model", "resnet50", "--workers", str(min(10, os.cpu_count() or 1)),
                         "--batch", "256", "--reps", "1" if quick else "2"])


def train_step_ratios(device: torch.device, model: str, batch: int, quick: bool) -> dict:
    """{"project/reference": r, "masked/dense": r} of benchmarks/train_step.py."""
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
    lines = text.getvalue().splitlines()
    return {k: float(next(x for x in lines if x.startswith(k + ":")).split(":")[1])
            for k in ("project/reference", "masked/dense")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="toy sizes (a dry run of every check)")
    ap.add_argument("--dry-run", action="store_true", help="--device cpu --quick")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device, args.quick = "cpu", True
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but no CUDA device is visible; use --device cpu --quick for a dry run",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    t0 = time.monotonic()
    check_device(device)
    steps = 2 if args.quick else 4
    ok = check_memory_format(device, steps)
    ok &= check_mask_format(device)
    ok &= check_loss_dtype(device, steps)
    ok &= check_resume(device, 2 if args.quick else 3)
    ok &= check_decode(device, args.quick)
    exemplar_over_labels(device, args.quick)
    check_input_pipeline(device, args.quick)
    r18 = train_step_ratios(device, "resnet18_cifar", 512, args.quick)
    r50 = train_step_ratios(device, "resnet50", 256, args.quick)
    say("time", f"{time.monotonic() - t0:.0f} s")
    for key in ("masked/dense", "project/reference"):
        print(f"resnet18_cifar batch 512 {key}: {r18[key]:.3f}")
        print(f"resnet50 batch 256 {key}: {r50[key]:.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
