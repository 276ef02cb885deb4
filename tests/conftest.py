"""Every test runs offline and writes only into its own temporary folders."""
import pytest


@pytest.fixture(autouse=True)
def isolated_kit(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_OFFLINE", "1")
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LABKIT_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("LABKIT_DATA", raising=False)
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    monkeypatch.delenv("LABKIT_TARGETS", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield
