"""Progress lines without a terminal: every 5 % of the run, and never silent for long."""
from __future__ import annotations

from gradhealth.train import progress as progress_module
from gradhealth.train.progress import Progress


def test_plain_lines_at_every_twentieth_and_after_a_quiet_spell(capsys):
    bar = Progress(100, terminal=False)
    bar.update(5, 1.0, 2.0, 0.1)
    bar.update(6, 1.0, 2.0, 0.1)
    assert capsys.readouterr().err.count("step ") == 1
    bar._printed -= progress_module.QUIET_SECONDS + 1  # as if the last line were long ago
    bar.update(7, 0.5, 2.0, 0.1)
    assert "step 7/100  loss 0.5" in capsys.readouterr().err
    bar.close()
