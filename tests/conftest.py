"""Every test runs offline and writes only into its own temporary folders."""
import builtins
import io

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


@pytest.fixture
def swap_after_first_read(monkeypatch):
    """An attacker who wins the race: `swap(path, new_bytes)` makes every open of `path` after the
    first one find new_bytes, so code that checks a file and then reads it again is caught."""
    real_open = builtins.open

    def swap(path, new_bytes: bytes):
        opened = []

        def racing_open(file, mode="r", *args, **kwargs):
            if str(file) == str(path) and "r" in str(mode):
                if opened:
                    with real_open(path, "wb") as f:
                        f.write(new_bytes)
                opened.append(1)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", racing_open)
        monkeypatch.setattr(io, "open", racing_open)

    return swap
