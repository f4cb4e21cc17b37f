"""Tickets: the domain (model, transition rules) and the store, the only code that writes them."""
