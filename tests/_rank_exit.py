"""torchrun's entry point in tests/test_train_fsdp.py: gradhealth's command line as ``-m gradhealth`` runs it, plus
this rank's exit status in ``$EXIT_STATUS_DIR/rank<RANK>`` (torchrun exits with its own status, not its workers')."""
import os
import sys

from gradhealth.cli import main

status = main(sys.argv[1:])
with open(os.path.join(os.environ["EXIT_STATUS_DIR"], f"rank{os.environ['RANK']}"), "w") as handle:
    handle.write(str(status))
sys.exit(status)
