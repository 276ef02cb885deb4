"""How a failed check (or a missed target) looks in Jupyter: the sentence first, then only the
learner's own frames. labkit's internals are not the learner's business; their code is."""
from __future__ import annotations

import os
import types

_KIT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the labkit package
RED, RESET = "\x1b[1;31m", "\x1b[0m"


def _is_kit_frame(tb) -> bool:
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_KIT_DIR + os.sep)


def learner_frames(tb, keep_first: bool = False):
    """The traceback without labkit's frames (a new chain; the frames themselves are shared)."""
    kept = []
    first = True
    while tb is not None:
        if (keep_first and first) or not _is_kit_frame(tb):
            kept.append(tb)
        first = False
        tb = tb.tb_next
    chain = None
    for entry in reversed(kept):
        chain = types.TracebackType(chain, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return chain


def _sentence(value) -> str:
    return str(value).strip().splitlines()[0] if str(value).strip() else type(value).__name__


def show_failure(shell, etype, value, tb, tb_offset=None):
    """IPython custom exception handler: the sentence in red on top, then the traceback with
    labkit's frames removed (IPython's own first frame stays, so tb_offset still skips it)."""
    cause = value.__cause__
    if cause is not None and cause.__traceback__ is not None:
        cause.__traceback__ = learner_frames(cause.__traceback__)
    trimmed = learner_frames(tb, keep_first=True)
    stb = shell.InteractiveTB.structured_traceback(etype, value, trimmed, tb_offset=tb_offset)
    stb = [f"{RED}{_sentence(value)}{RESET}", ""] + list(stb)
    shell._showtraceback(etype, value, stb)
    return stb


def install() -> bool:
    """Register the handler in a running IPython (a Jupyter kernel); True when installed."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    from ..targets import TargetMissed
    from .common import ExerciseFailed

    shell.set_custom_exc((ExerciseFailed, TargetMissed), show_failure)
    return True
