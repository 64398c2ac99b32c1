"""Session set-up shared by the tests."""
import multiprocessing

# Every training run with --workers >= 1 starts a background evaluator process from the
# forkserver; importing torch there once for the session instead of once per run saves
# ~1.5 s a run (marl.core.vec.process_context).
multiprocessing.set_forkserver_preload(["__main__", "marl.core.evaluator"])
