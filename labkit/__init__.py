"""ML Security Lab Kit helpers: the plumbing behind the labs, so each notebook shows only its idea."""
from .env import device, profile, seed_everything, set_threads, setup
from .targets import TargetMissed, report

__version__ = "0.1.0"
__all__ = ["device", "profile", "report", "seed_everything", "set_threads", "setup", "TargetMissed"]
