"""``python -m swv.cli`` (also what ``accelerate launch -m swv.cli ...`` runs)."""

from swv.cli.main import main

main()
