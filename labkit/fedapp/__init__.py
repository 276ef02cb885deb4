"""Lab 06's federated task (SMS spam over non-IID clients, with a backdoor attacker) and the Flower
app that runs it on the deployment engine (`pyproject.toml` here is the Flower app manifest; see
README, "Running lab 06 across machines")."""
from .task import ATTACKS, SpamTask, hashed_bag_of_words

__all__ = ["SpamTask", "ATTACKS", "hashed_bag_of_words"]
