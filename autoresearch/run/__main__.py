"""`python -m autoresearch.run`: what ./run.sh executes."""
import sys

from .runner import main

sys.exit(main())
