import pytest
import torch

from labkit import env


def test_default_profile_is_quick_without_a_gpu(monkeypatch):
    monkeypatch.setattr(env, "_cuda_available", lambda: False)
    assert env.profile() == "quick"


def test_default_profile_is_full_with_cuda(monkeypatch):
    monkeypatch.setattr(env, "_cuda_available", lambda: True)
    assert env.profile() == "full"


def test_profile_variable_overrides_hardware(monkeypatch):
    monkeypatch.setattr(env, "_cuda_available", lambda: False)
    monkeypatch.setenv("LABKIT_PROFILE", " Full ")
    assert env.profile() == "full"


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "turbo")
    with pytest.raises(env.ProfileError) as err:
        env.profile()
    message = str(err.value)
    assert "'turbo'" in message and "quick" in message and "full" in message


def test_seeding_makes_torch_and_numpy_repeatable():
    import numpy as np

    env.seed_everything(7)
    first = (torch.rand(3), np.random.rand(3))
    env.seed_everything(7)
    second = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], second[0]) and (first[1] == second[1]).all()
    env.seed_everything(8)
    assert not torch.equal(first[0], torch.rand(3))


def test_threads_follow_override_and_never_zero(monkeypatch):
    monkeypatch.setenv("LABKIT_THREADS", "1")
    assert env.set_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("LABKIT_THREADS", "0")
    assert env.cpu_threads() == 1
    monkeypatch.delenv("LABKIT_THREADS")
    assert env.cpu_threads() >= 1


def test_setup_returns_a_usable_device(monkeypatch):
    monkeypatch.setenv("LABKIT_THREADS", "2")
    device = env.setup(seed=1)
    assert torch.zeros(2, device=device).sum().item() == 0
    assert "cpu" in env.device_name() or "cuda" in env.device_name() or "mps" in env.device_name()
