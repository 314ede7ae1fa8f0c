"""Example modules for users: see `user_task.py`."""
