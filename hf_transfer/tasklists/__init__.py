"""Recipes made of task lists and their data, shared by the families that have them (multi-task, meta-learning,
lifelong): :mod:`~hf_transfer.tasklists.recipe` parses ``tasks:`` lists, :mod:`~hf_transfer.tasklists.data` loads,
checks and tokenises each task. Below the family packages, so that none of them imports another."""
