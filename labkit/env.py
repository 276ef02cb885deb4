"""Runtime environment: the active profile, the compute device, seeding and CPU threads."""
from __future__ import annotations

import os
import random

PROFILES = ("quick", "full")
PROFILE_VARIABLE = "LABKIT_PROFILE"


class ProfileError(ValueError):
    """LABKIT_PROFILE holds a value the kit does not know."""


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # a TensorFlow-only environment still gets a profile
        return False
    return bool(torch.cuda.is_available())


def profile() -> str:
    """The active profile: `LABKIT_PROFILE` if set, else `full` with CUDA and `quick` without."""
    value = os.environ.get(PROFILE_VARIABLE, "").strip().lower()
    if value:
        if value not in PROFILES:
            raise ProfileError(
                f"{PROFILE_VARIABLE}={os.environ[PROFILE_VARIABLE]!r} is not a profile; "
                f"use one of {', '.join(PROFILES)} (or unset it to choose by hardware)."
            )
        return value
    return "full" if _cuda_available() else "quick"


def device(prefer: str | None = None):
    """The torch device the labs should use: cuda, then Apple's mps, then cpu."""
    import torch

    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name() -> str:
    """A human-readable name of the compute device, for reports."""
    try:
        chosen = device()
    except ImportError:  # a TensorFlow-only environment
        return "cpu"
    if chosen.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)})"
    if chosen.type == "mps":
        return "mps"
    return f"cpu ({os.cpu_count()} cores, {cpu_threads()} torch threads)"


# The packages whose versions decide a lab's numbers: `labkit doctor` lists them, reports record them.
KEY_PACKAGES = ("labkit", "torch", "numpy", "tensorflow-cpu", "tf-keras", "tensorflow-privacy", "opacus",
                "cleverhans", "adversarial-robustness-toolbox", "scikit-learn", "textattack", "flwr", "fastapi",
                "uvicorn", "jupyterlab", "nbval", "pooch")


def versions(include_missing: bool = False) -> dict:
    """{package: version} for Python and KEY_PACKAGES ("not installed" only with include_missing)."""
    import platform
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if include_missing:
                found[name] = "not installed"
    return found


def cpu_threads() -> int:
    """Threads for CPU math. Measured on 2-core machines: as many threads as cores is fastest;
    more than the cores is slower, so never exceed them. `LABKIT_THREADS` overrides."""
    override = os.environ.get("LABKIT_THREADS")
    if override:
        return max(1, int(override))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        cores = os.cpu_count() or 1
    return max(1, cores)


def set_threads(n: int | None = None) -> int:
    """Apply the CPU thread count to torch (and TensorFlow, if already imported)."""
    import sys

    n = n or cpu_threads()
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
        except RuntimeError:  # TF refuses once its runtime has started; harmless
            pass
    return n


def seed_everything(seed: int = 0) -> int:
    """Seed python, numpy, torch and TensorFlow (those installed) so a run is repeatable."""
    import sys

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    except ImportError:
        pass
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        tf.random.set_seed(seed)
    return seed


def setup_tensorflow(tf, keras, seed: int = 0, threads: int | None = None) -> None:
    """Threads and seeds for an imported TensorFlow and the Keras it uses (Keras 3 for lab 01b,
    tf-keras for lab 03b: the caller has checked which)."""
    tf.get_logger().setLevel("ERROR")  # retracing notices when a lab attacks or times several models
    n = threads or cpu_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # the runtime has started already; the earlier setting stays
        pass
    seed_everything(seed)
    keras.utils.set_random_seed(seed)


def setup(seed: int = 0, threads: int | None = None):
    """One call at the top of a lab: seed everything, set CPU threads, return the torch device."""
    set_threads(threads)
    seed_everything(seed)
    return device()
