"""Exit codes of every kubelvs command (like diff(1) and ``kubectl diff``)."""

OK = 0  # success; for diff: the kernel already matches
CHANGES = 1  # diff: there are changes to make; doctor: findings of severity warning or worse
ERROR = 2  # invalid input, backend or kernel error: nothing (more) was changed
INTERRUPTED = 130
