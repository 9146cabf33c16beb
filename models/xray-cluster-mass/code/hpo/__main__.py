"""`python -m hpo` runs the command line (what `hpo launch` starts its workers with)."""

from hpo.cli import main

main()
