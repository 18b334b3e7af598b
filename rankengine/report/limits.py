"""Report limits shared by the report builder and the command line (a leaf module)."""

MAX_ROWS = 200_000  # rows of the evaluation split scored for the curves
