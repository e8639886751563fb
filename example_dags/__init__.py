"""Example DAGs; each runs end to end against the local DAP emulator (see run_demo.py)."""
