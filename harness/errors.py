"""The one error type that reaches the user as a single line with exit code 2."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(Exception):
    """Bad input: the message names the problem and the fix. The CLI prints it and exits with 2."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UsageError:
    """A UsageError for an unknown registry or config name, with the closest known names."""
    known = sorted(known)
    folded = {k.lower(): k for k in known}  # `method=BoN` is closest to bon
    close = [folded[c] for c in difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.5)]
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return UsageError(f"unknown {kind} {name!r}; {hint}known: {', '.join(known)}")
