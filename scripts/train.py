import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E401
from marl.cli import main  # noqa: E402
raise SystemExit(main())
