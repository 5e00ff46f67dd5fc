"""`python -m ssfl_mpi`: the command line."""

from .cli import main

raise SystemExit(main())
