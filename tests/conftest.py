"""Session set-up shared by the tests."""
import multiprocessing
import os

import pytest
import torch

# Every training run with --workers >= 1 starts a background evaluator process from the
# forkserver; importing torch there once for the session instead of once per run saves
# ~1.5 s a run (marl.core.vec.process_context).
multiprocessing.set_forkserver_preload(["__main__", "marl.core.evaluator"])

# Under pytest-xdist the test processes share the cores: torch's own threads in each take
# their share, not every core (runs through the trainer set torch_threads themselves).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The trainer sets torch_threads for the whole process; each test starts from the same count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
