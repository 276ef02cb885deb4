import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from labkit import cli, notebooks, workspace


@pytest.fixture(autouse=True)
def own_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv(workspace.WORKSPACE_ENV, str(tmp_path / "workspace"))


def test_list_shows_the_catalogue(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "01_fgsm_mnist" in out and "beginner" in out and "quick (CPU)" in out


def test_data_verify_passes_on_the_shipped_data(capsys):
    assert cli.main(["data", "verify", "mnist", "sms_spam"]) == 0
    assert "ok" in capsys.readouterr().out


def test_data_verify_fails_on_a_corrupted_copy(tmp_path, monkeypatch, capsys):
    from labkit import datasets

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "MANIFEST.toml").write_text((datasets.KIT_DATA / "MANIFEST.toml").read_text())
    (folder / "mnist.npz").write_bytes(b"not an npz")
    monkeypatch.setenv("LABKIT_DATA", str(folder))
    assert cli.main(["data", "verify", "mnist"]) == 1
    assert "CORRUPTED" in capsys.readouterr().out


def test_unknown_names_are_errors_not_tracebacks(capsys):
    assert cli.main(["data", "verify", "imagenet"]) == 2
    assert cli.main(["run", "99_nothing"]) == 2
    err = capsys.readouterr().err
    assert "Unknown dataset 'imagenet'" in err and "Unknown lab '99_nothing'" in err


def test_bad_profile_is_reported_by_doctor(monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_PROFILE", "turbo")
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "'turbo' is not a profile" in out and "torch" in out and "mnist" in out


def test_build_check_passes_on_the_committed_tree(capsys):
    assert cli.main(["build", "--check"]) == 0


def test_check_lists_todos_of_an_unfinished_notebook(tmp_path, capsys):
    path = tmp_path / "01_fgsm_mnist.ipynb"
    nbformat.write(new_notebook(cells=[
        new_code_cell('def fgsm(model, x, y, eps):\n    # TODO: write fgsm\n    raise NotImplementedError("TODO: write fgsm")'),
    ]), path)
    assert cli.main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 TODO(s) left" in out and "cell 1: write fgsm" in out and "Traceback" not in out


def test_check_on_a_missing_notebook(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "nope.ipynb")]) == 2
    assert "No notebook at" in capsys.readouterr().err


def test_check_on_a_renamed_notebook_suggests_the_lab_option(tmp_path, capsys):
    path = tmp_path / "my_attempt.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), path)
    assert cli.main(["check", str(path)]) == 2
    assert "--lab" in capsys.readouterr().err


def test_check_by_lab_id_shows_progress_and_keeps_the_attempt(tmp_path, capsys):
    ws = tmp_path / "workspace"
    ws.mkdir()
    nb = new_notebook(cells=[
        new_code_cell("from labkit.check.common import Feedback\n"
                      "class check:\n    def double(fn):\n        return Feedback('double', fn(2) == 4, 'ok').show()"),
        new_code_cell("check.double(lambda x: 2 * x)"),
        new_code_cell("import labkit\nlabkit.report('01_fgsm_mnist', {'clean_accuracy': 0.99})"),
    ])
    notebooks.mark_exercises(nb)
    nbformat.write(nb, ws / "01_fgsm_mnist.ipynb")
    assert cli.main(["check", "01_fgsm_mnist", "--timeout", "120"]) == 1
    out = capsys.readouterr().out
    assert "[ 1/3]" in out and "[ 3/3]" in out and "cell 2: check.double(lambda x: 2 * x)" in out
    assert "exercise double: passed" in out and "target clean_accuracy" in out and "NOT PASSED YET" in out
    attempt = json.loads((ws / "attempts" / "01_fgsm_mnist.jsonl").read_text())
    assert attempt["exercises"] == {"double": "passed"} and not attempt["passed"]
    assert attempt["targets"]["clean_accuracy"]["met"] and not attempt["targets"]["fgsm_accuracy"]["met"]
    assert attempt["profile"] == "quick" and attempt["wall_time_s"] > 0
