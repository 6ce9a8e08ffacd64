"""``python -m gradhealth`` (and ``torchrun -m gradhealth``) runs the command line."""
import sys

from gradhealth.cli import main

sys.exit(main())
