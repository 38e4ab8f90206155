"""Command-line entry points: flag definitions and the programs behind `python -m psl_tf.*`."""
