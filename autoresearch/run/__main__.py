"""`python -m autoresearch.run`: what ./run.sh executes."""
import sys

from .main import main

sys.exit(main())
