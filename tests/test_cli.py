import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from labkit import cli


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
