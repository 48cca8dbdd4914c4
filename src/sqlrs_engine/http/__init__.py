"""HTTP: a Bottle app on Cheroot that translates requests into actor messages.

No business logic lives here (ARCHITECTURE rule 6): a route parses and validates input with
pure functions, sends one message, and renders the reply as JSON or NDJSON.
"""
