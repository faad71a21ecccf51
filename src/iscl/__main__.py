"""``python -m iscl`` (also what ``torchrun -m iscl`` runs)."""

from iscl.cli import main

main()
