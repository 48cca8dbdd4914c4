"""What a prepare job does, as plain objects run by its PrepareJob actor's worker thread.

The actor (actors/prepare_job.py) supervises; the code here plans and executes tasks and
writes events. Keeping it out of the actor lets it be tested with a fake registry.
"""
