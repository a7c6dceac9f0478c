"""Meta-training episodes/s: `torchrun --nproc_per_node=2` (1 thread per process) against one process
with 1 and with 2 threads, so that the 2-process run is compared with the same CPU budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

META_BATCH_SIZE = 8
# (algo, backbone, steps): ProtoNet episodes are cheap (communication shows), MAML's are not.
CASES = [("protonet", "cnn", 24), ("maml", "cnn", 8)]
SETUPS = [
    ("1 process x 1 thread", 1, 1),
    ("1 process x 2 threads", 1, 2),
    ("torchrun 2 processes x 1 thread", 2, 1),
]


def episodes_per_s(algo: str, backbone: str, steps: int, processes: int, threads: int, run_dir: Path) -> float:
    """Train with validation only at the end (1 episode) and read the throughput the run logged."""
    overrides = [
        f"algo={algo}",
        f"backbone={backbone}",
        f"trainer.steps={steps}",
        f"trainer.meta_batch_size={META_BATCH_SIZE}",
        f"trainer.eval_interval={steps}",
        f"trainer.log_interval={steps}",
        "trainer.val_episodes=1",
        "protocol.episodes=1",
        "trainer.device=cpu",
        "trainer.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    if processes == 1:
        command = [sys.executable, "-m", "metanlp_cli", "train", *overrides]
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*torchrun, "-m", "metanlp_cli", "train", *overrides, "trainer.distributed=true"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, capture_output=True, env=env, timeout=1800)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["episodes_per_s"] for r in reversed(records) if "episodes_per_s" in r)


def main() -> str:
    rows, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        for algo, backbone, steps in CASES:
            speeds = []
            for name, processes, threads in SETUPS:
                run_dir = Path(folder) / f"{algo}-{backbone}-{processes}x{threads}"
                speeds.append(episodes_per_s(algo, backbone, steps, processes, threads, run_dir))
                print(f"   {algo}/{backbone}, {name}: {speeds[-1]:.2f} episodes/s", flush=True)
            one, two_threads, two_processes = speeds
            rows.append(
                f"| {algo}/{backbone} | {steps} x {META_BATCH_SIZE} | {one:.2f} | {two_threads:.2f} | "
                f"{two_processes:.2f} | {two_processes / two_threads:.2f}x | {two_processes / one:.2f}x |"
            )
    return "\n".join(
        [
            "## Multi-process meta-training (torchrun, gloo)",
            "",
            f"Meta-training episodes per second (meta-batch of {META_BATCH_SIZE} episodes, 5-way 5-shot, "
            "built-in dataset, CPU; validation on 1 episode at the end only). The 2-process run shares each "
            "meta-batch between the processes and all-reduces the gradients every step; it is compared "
            "with one process given the same 2 threads, and with one process on 1 thread.",
            "",
            "| algo/backbone | steps x episodes | 1 process x 1 thread | 1 process x 2 threads | "
            "torchrun 2 x 1 thread | 2 processes vs 1 x 2 threads | 2 processes vs 1 x 1 thread |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Load average (1 min) {load_before:.2f} before and {os.getloadavg()[0]:.2f} after, on "
            f"{os.cpu_count()} cores: on a shared machine other jobs take CPU time too, so the numbers are "
            "noisy, and a process with 2 threads suffers most (each thread waits for the slowest).",
            "",
        ]
    )
