"""`python scripts/train.py ...` is `marl ...` (same code, for a checkout that is not pip-installed)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # env worker processes import this file again: only the parent trains
    from marl.cli import main

    raise SystemExit(main())
