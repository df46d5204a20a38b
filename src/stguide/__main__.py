"""``python -m stguide …`` (the ``stguide`` command; also what ``torchrun -m stguide`` starts in every process)."""
from stguide.cli import main

raise SystemExit(main())
