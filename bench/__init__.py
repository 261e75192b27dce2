"""p2pcdn benchmarks (DESIGN §6): ``python -m bench`` runs them and records the figures.

Each benchmark is a module ``bench.<name>`` with ``run(quick: bool = False) -> dict`` that
returns ``{"name": str, "rows": [{"metric": str, "value": float, "unit": str}, ...],
"notes": [str, ...]}``; a row may also carry ``"target": str``, printed beside the figure.
Benchmarks compare ratios measured within one run; absolute figures depend on the machine,
which is recorded with every result (``bench/results/*.json``).
"""
