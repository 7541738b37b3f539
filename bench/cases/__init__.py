"""One module per benchmark case; each has ``measure(ctx, case) -> CaseResult`` (see run.py)."""
