"""The ``kimap`` command line and its jobs (a front end: it calls the stages, it holds no science).

Takes command-line arguments and gives files: ``kimap phantom | extract | train | map | export | bench-maps | demo``.
"""
