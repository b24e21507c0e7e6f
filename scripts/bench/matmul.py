"""This machine's practical fp32 ceiling for scripts/bench-step.sh: FLOP/s of a large square matmul
with P threads (the best of several). Prints one number."""
import sys
import time

import torch

threads, n = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2048
torch.set_num_threads(threads)
a, b = torch.randn(n, n), torch.randn(n, n)
torch.mm(a, b)
best = min((lambda t0: (torch.mm(a, b), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
print(2 * n**3 / best)
