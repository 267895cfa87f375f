"""FSDP on CPU: accelerate turns FSDP on only for accelerator devices (its MULTI_CPU state takes no FSDP plugin), so
`accelerate launch` with `examples/accelerate_fsdp.yaml` cannot run on this machine; this test shards the model
with torch's own FSDP2 (`fully_shard`, what accelerate's FSDP2 plugin calls) over 2 gloo processes and checks that
one pretraining step gives the gradients of 1 process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_examples import GRADIENT_RTOL, assert_close_tensors

ROOT = Path(__file__).resolve().parent.parent


def run_worker(processes: int, output: Path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(ROOT / "tests" / "fsdp_worker.py"), str(output)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for attempt in range(2):  # a launch that dies (rendezvous, gloo at exit) is retried once; numbers never are
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            break
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(output)


def test_fsdp2_two_processes_give_the_one_process_gradients(tmp_path):
    pytest.importorskip("torch.distributed.fsdp", reason="needs torch.distributed")
    one, two = run_worker(1, tmp_path / "one.pt"), run_worker(2, tmp_path / "two.pt")
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-5, atol=0)
    assert set(two["gradients"]) == set(one["gradients"]) and len(one["gradients"]) > 20
    assert_close_tensors(two["gradients"], one["gradients"], scale_rtol=GRADIENT_RTOL)
