"""``make bench``: every scenario of issue 8 beside its baseline, on this machine.

Run ``python -m bench.run --help`` for the options; ``bench/README.md`` says
what each figure measures and records a run.
"""
