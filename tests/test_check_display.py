"""In Jupyter a failed check shows its sentence first and hides labkit's frames; the learner's stay."""
import sys

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from labkit.check import display


def _run(cells):
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True).execute()
    return [o for c in nb.cells for o in c.outputs if o.output_type == "error"]


def test_a_failed_check_in_a_kernel_shows_the_sentence_first_and_only_learner_frames():
    errors = _run([
        "from labkit import check",
        "def fgsm(model, x, y, eps):\n    return x[1000]  # the learner's bug",
        "check.fgsm(fgsm)",
    ])
    assert len(errors) == 1
    error = errors[0]
    assert error.ename == "ExerciseFailed"  # nbval and `labkit check` still see a failed cell
    text = "\n".join(error.traceback)
    assert "✗ fgsm: your function raised IndexError" in error.traceback[0]
    assert "the learner's bug" in text  # the learner's frame stays
    assert "labkit/check/" not in text and "common.py" not in text  # the kit's frames are gone


def test_trimming_keeps_the_learner_frames_of_a_plain_traceback():
    from labkit import check

    def learner(model, x, y, eps):
        return x[1000]

    try:
        check.fgsm(learner)
    except check.ExerciseFailed as err:
        tb = err.__cause__.__traceback__
    names = []
    trimmed = display.learner_frames(tb)
    while trimmed is not None:
        names.append(trimmed.tb_frame.f_code.co_name)
        trimmed = trimmed.tb_next
    assert names == ["learner"]
    assert sys.getprofile() is None  # the reference watch is switched off again


def test_a_failed_check_still_stops_the_notebook():
    """nbval and `labkit run` rely on the kernel reporting the failed cell as an error."""
    import pytest
    from nbclient.exceptions import CellExecutionError

    nb = new_notebook(cells=[new_code_cell("from labkit import check\ncheck.spectral_signatures(lambda r: r[:, 0])"),
                             new_code_cell("print('not reached')")])
    with pytest.raises(CellExecutionError, match="spectral_signatures"):
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert nb.cells[1].outputs == []
