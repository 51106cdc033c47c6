"""The one training loop (trainer.py) and run-directory checkpoints (checkpoint.py)."""
