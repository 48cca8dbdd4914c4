"""Pykka actors: each owns one piece of mutable, concurrent state (ARCHITECTURE rule 1).

Public methods of an actor are its messages; callers use typed proxies (`*Proxy` classes next
to each actor) so that mypy checks the messages like ordinary calls.
"""
