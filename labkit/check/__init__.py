"""Learner feedback: run a learner's function on fixed inputs, compare it with a reference, and
answer in one sentence that points at the fix.

    labkit.check.fgsm(fgsm)                 # prints "✓ fgsm: ..." or raises ExerciseFailed
    labkit.check.fgsm_random_start(fn)      # the adversarial-training perturbation
    labkit.check.fgsm_tf(fgsm)              # the same exercises in TensorFlow/Keras (lab 01b)
    labkit.check.hint("fgsm")               # hint 1, 2, 3 of an exercise, one per call

A check prints a `Feedback` and returns it when the function passes; it raises `ExerciseFailed`
(an AssertionError, so nbval and pytest mark the cell as failed) with the diagnosis otherwise.
One module per topic; the public calls stay `labkit.check.<exercise>(fn)`. Checks run on small
seeded benches inside `torch.random.fork_rng()`, so running a check never changes the notebook's
random numbers. In Jupyter a failed check shows its sentence first and hides the kit's frames.
"""
from . import display
from .common import ExerciseFailed, Feedback
from .federated import norm_clip
from .evasion import adversarial_batch, fgsm, fgsm_random_start, perturb
from .evasion_tf import fgsm_random_start_tf, fgsm_tf
from .extraction import _NEGATIVE_WORDS, _POSITIVE_WORDS, _surrogate_bench, train_surrogate  # noqa: F401 - tests use the bench
from .certification import smoothing_certify, smoothing_predict
from .hints import hint
from .poisoning import spectral_signatures
from .pgd import adversarial_step, pgd
from .pipeline import release_gate, squeezing_score
from .privacy import dp_sgd_epsilon, dp_sgd_step
from .serving import api_key_lookup, sliding_window
from .text import sanitiser

__all__ = ["ExerciseFailed", "Feedback", "fgsm", "fgsm_random_start", "adversarial_batch", "perturb",
           "dp_sgd_step", "dp_sgd_epsilon", "train_surrogate", "api_key_lookup", "sliding_window",
           "spectral_signatures", "smoothing_predict", "smoothing_certify", "hint", "sanitiser", "fgsm_tf", "fgsm_random_start_tf",
           "release_gate", "squeezing_score"]

display.install()  # in Jupyter: a failed check shows its sentence first, without labkit's frames
