"""A 1-GPU job for scripts/gpu_check.sh: an NCCL all_reduce and a bf16 matmul on CUDA."""

import os
import time

import torch
import torch.distributed as dist

print("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
print("cuda", torch.cuda.is_available(), torch.cuda.device_count(), torch.cuda.get_device_name(0))
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29555")
dist.init_process_group("nccl", rank=0, world_size=1)
t = torch.arange(4.0, device="cuda:0")
dist.all_reduce(t)
print("nccl all_reduce ok", t.tolist(), "nccl", torch.cuda.nccl.version(), flush=True)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
a @ a  # warm-up
torch.cuda.synchronize()
start = time.time()
for _ in range(10):
    a @ a
torch.cuda.synchronize()
print(f"bf16 matmul TFLOP/s {10 * 2 * 8192**3 / (time.time() - start) / 1e12:.0f}", flush=True)
dist.destroy_process_group()
